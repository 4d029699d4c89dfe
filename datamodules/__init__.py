"""LightningDataModules and the data they read and write. main.py imports the datamodule
modules it registers for short class names (REGISTERED_CLASS_MODULES); this package stays light."""
