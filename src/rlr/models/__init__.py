"""Reconstructors: plain `nn.Module`s that map backbone features to their reconstruction."""
