"""LightningDataModules. Imported by main.py so configs can name them by short class name."""
from datamodules.raw import RawShardDataModule

__all__ = ["RawShardDataModule"]
