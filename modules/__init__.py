"""LightningModules and their building blocks. Imported by main.py so configs can name the
modules by short class name (`class_path: TokenizerModule`)."""
