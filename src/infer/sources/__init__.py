"""Where models come from: the Hub (hf.py), PyPI wheels (pypi.py), plain HTTP (download.py).
These are the only modules that touch the network."""
