"""The node's HTTP face: job API, DICOMweb STOW-RS, authentication (SPEC "HTTP API")."""
