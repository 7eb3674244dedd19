"""Building blocks shared by the reconstructors (timm.layers supplies the FFN, `timm.layers.Mlp`)."""
