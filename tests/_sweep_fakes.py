"""Classes a sweep test's base config names, so that the Lightning CLI's parser can validate it
(the fake fit script that stands in for `main.py fit` never builds them)."""
from lightning.pytorch import Callback, LightningDataModule, LightningModule


class FakeModule(LightningModule):
    def __init__(self, lr: float = 0.1, width: int = 8, fail: bool = False):
        super().__init__()


class EveryN(Callback):
    def __init__(self, every: int = 5):
        super().__init__()


class FakeData(LightningDataModule):
    pass
