"""Study files: the schema (`schema`), reading and expanding them into cells (`study`)."""

from tunebench.config.schema import CellConfig, StudyConfig
from tunebench.config.study import Cell, Study, load_study

__all__ = ["Cell", "CellConfig", "Study", "StudyConfig", "load_study"]
