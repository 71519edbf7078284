"""radfusion: deep, handcrafted and hybrid radiomics for neuro-oncology."""

__version__ = "0.1.0"
