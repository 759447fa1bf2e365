"""Built-in ``entropy`` uncertainty gate over CRF posterior marginals."""
