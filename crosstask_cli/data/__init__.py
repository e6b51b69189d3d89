"""Datasets: the prepared on-disk format, converters from Cityscapes/NYUv2 layouts, the synthetic renderer."""
