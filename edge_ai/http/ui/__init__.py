"""The dashboard (`/ui/` on the HTTP API): see routes.py."""
