"""LightningDataModules and the data they read and write. The Lightning CLI
(commands/lightning_cli.py, REGISTERED_CLASS_MODULES) imports the modules configs name classes from; this package stays light."""
