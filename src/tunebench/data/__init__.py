"""Data: sources (hub, local files, built-in samples), cleaning, nested stratified sampling, bad-row accounting.

    load_task_data(cfg.data, tokenizer) -> TaskData(task, labels, train, validation, test, report, data_hash)
"""

from tunebench.data.loader import LoadedSource, load_source, load_task_data, task_data
from tunebench.data.records import Example, LoadReport, TaskData
from tunebench.data.sources import BUILTINS, DEFAULT_HUB_SOURCES

__all__ = ["BUILTINS", "DEFAULT_HUB_SOURCES", "Example", "LoadReport", "LoadedSource", "TaskData", "load_source",
           "load_task_data", "task_data"]
