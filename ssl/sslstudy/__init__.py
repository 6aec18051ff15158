"""sslstudy: when does self-supervised visual representation learning work?"""

__version__ = "0.1.0"
