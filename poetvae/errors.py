"""Exceptions the library raises. The CLI turns each into a one-line error and exit code 1."""


class PoetVAEError(Exception):
    """Base class: anything a user can cause (bad file, bad flag, bad poem)."""


class CorpusError(PoetVAEError):
    """A corpus file or a poem argument that cannot be read or is not a 五言绝句."""


class VocabError(PoetVAEError):
    """A token or character that the vocabulary does not know."""


class ConfigError(PoetVAEError):
    """An unknown config key, a value of the wrong type, or an inconsistent setting."""


class CheckpointError(PoetVAEError):
    """A directory that is not a prep or run directory, or a damaged one."""


class TrainingDiverged(PoetVAEError):
    """The training loss (or the weights) became NaN or infinite; nothing non-finite was saved."""


class RunLocked(PoetVAEError):
    """Another training holds the run directory."""
