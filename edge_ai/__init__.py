"""edge_ai: an on-premises DICOM edge appliance that turns CT and X-ray images into AI results SRs."""

__version__ = "0.1.0"
