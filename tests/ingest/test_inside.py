"""`inside`: a path is used only if, links followed, it stays in its source folder. Files right
in the folder take a short way (one lstat); the answers must be those of a full resolve."""

import pytest

from tasks.ingest.sources import PathOutsideSource, inside


@pytest.fixture
def tree(tmp_path):
    root, outside = tmp_path / "images", tmp_path / "elsewhere"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (root / "a.jpg").write_bytes(b"a")
    (root / "sub" / "b.jpg").write_bytes(b"b")
    (outside / "secret.jpg").write_bytes(b"s")
    (root / "to_a.jpg").symlink_to(root / "a.jpg")  # a link that stays inside
    (root / "out.jpg").symlink_to(outside / "secret.jpg")
    (root / "linked_folder").symlink_to(outside, target_is_directory=True)
    return root, outside


def test_plain_files_and_links_that_stay_inside_are_inside(tree):
    root, _ = tree
    assert inside(root, root / "a.jpg") == (root / "a.jpg").resolve()
    assert inside(root, root / "sub" / "b.jpg") == (root / "sub" / "b.jpg").resolve()
    assert inside(root, root / "to_a.jpg") == (root / "a.jpg").resolve()


@pytest.mark.parametrize("name", ["out.jpg", "linked_folder/secret.jpg", "sub/../../elsewhere/secret.jpg"])
def test_a_path_that_leads_out_is_refused(tree, name):
    root, _ = tree
    with pytest.raises(PathOutsideSource):
        inside(root, root / name)


def test_a_root_reached_through_a_link_holds_its_own_files(tree, tmp_path):
    root, _ = tree
    alias = tmp_path / "alias"
    alias.symlink_to(root, target_is_directory=True)
    assert inside(alias, alias / "a.jpg") == (root / "a.jpg").resolve()
    with pytest.raises(PathOutsideSource):
        inside(alias, alias / "out.jpg")
