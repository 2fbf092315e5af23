"""Per-record memos: remembered across runs, appended whole, a torn entry ignored."""

from tasks.core.memo import LineMemo, remembered_map


def test_entries_survive_a_new_memo_and_a_torn_last_entry_is_skipped(tmp_path):
    memo = LineMemo(tmp_path, "step", "key")
    memo.put('{"a": 1}', ['{"a": 1, "b": 2}', '{"a": 1, "b": 3}'], {"n": 2})
    memo.put('{"a": 2}', ['{"a": 2, "b": 4}'])
    memo.save()
    whole = memo.path.read_bytes()
    memo.path.write_bytes(whole[:-12])  # a run killed mid-write: the last entry is torn
    again = LineMemo(tmp_path, "step", "key")
    assert again.get('{"a": 1}') == (['{"a": 1, "b": 2}', '{"a": 1, "b": 3}'], {"n": 2})
    assert again.get('{"a": 2}') is None and len(again) == 1
    assert LineMemo(tmp_path, "step", "another key").get('{"a": 1}') is None
    # The next run appends after the torn bytes: its entries stay whole, the torn one is
    # never read as a hit (before: the first new entry was glued onto it and came back as its
    # outputs, broken, forever).
    again.put('{"a": 2}', ['{"a": 2, "b": 5}'])
    again.put('{"a": 3}', ['{"a": 3, "b": 6}'])
    again.save()
    later = LineMemo(tmp_path, "step", "key")
    assert later.get('{"a": 2}') == (['{"a": 2, "b": 5}'], {})
    assert later.get('{"a": 3}') == (['{"a": 3, "b": 6}'], {})
    assert later.get('{"a": 1}') == (['{"a": 1, "b": 2}', '{"a": 1, "b": 3}'], {"n": 2})


def test_an_entry_torn_anywhere_is_never_a_hit(tmp_path):
    memo = LineMemo(tmp_path, "step", "key")
    memo.put('{"a": 1}', ['{"a": 1, "b": 2}'], {"n": 1})
    memo.save()
    whole = memo.path.read_bytes()
    for cut in range(40, len(whole) - 1):  # past the digest, short of the newline
        memo.path.write_bytes(whole[:cut])
        torn = LineMemo(tmp_path, "step", "key")
        torn.put('{"z": 0}', ['{"z": 0}'])
        torn.save()  # glues nothing onto the torn bytes
        assert LineMemo(tmp_path, "step", "key").get('{"a": 1}') is None, cut


def test_remembered_map_makes_only_what_it_does_not_know(tmp_path):
    made = []

    def make(line: str) -> list[str]:
        made.append(line)
        return [line.upper()]

    first = LineMemo(tmp_path, "upper", "v1")
    assert list(remembered_map(['"x"', '"y"'], first, make)) == ['"X"', '"Y"']
    first.save()
    second = LineMemo(tmp_path, "upper", "v1")
    assert list(remembered_map(['"x"', '"z"', '"y"'], second, make)) == ['"X"', '"Z"', '"Y"']
    assert made == ['"x"', '"y"', '"z"']


def test_new_entries_are_appended_as_they_come_and_read_back_when_asked_for(tmp_path):
    from tasks.core.memo import FLUSH_EVERY

    memo = LineMemo(tmp_path, "step", "key")
    for n in range(FLUSH_EVERY + 3):
        memo.put(f'{{"n": {n}}}', [f'{{"m": {n}}}'])
    assert memo.path.read_text().count("\n") == FLUSH_EVERY  # a block written before the end
    memo.save()
    again = LineMemo(tmp_path, "step", "key")
    assert len(again) == FLUSH_EVERY + 3 and not again._new  # nothing of it held, only where
    assert again.get('{"n": 7}') == (['{"m": 7}'], {})
    assert again.get(f'{{"n": {FLUSH_EVERY + 2}}}') == ([f'{{"m": {FLUSH_EVERY + 2}}}'], {})


def test_an_entry_naming_a_file_that_is_gone_is_not_an_answer(tmp_path):
    made = tmp_path / "flip.jpg"
    made.write_bytes(b"pixels")
    memo = LineMemo(tmp_path, "step", "key")
    memo.put('{"a": 1}', ['{"a": 1, "flip": "x"}'], {"paths": [str(made)]})
    memo.save()
    assert LineMemo(tmp_path, "step", "key").get('{"a": 1}') == (
        ['{"a": 1, "flip": "x"}'], {"paths": [str(made)]})
    made.unlink()  # a store cleaned by hand
    assert LineMemo(tmp_path, "step", "key").get('{"a": 1}') is None
