"""`prelabel: {adopt: verified}`: the inbox's XMLs a person marked verified in LabelImg are
labels; pre-labels, unverified XMLs and unlabelled images are not, and are not new data."""

import shutil
from pathlib import Path

from tasks.core.config import SourceConfig
from tasks.core.labels import ANY_LABEL
from tasks.core.records import read_rejections, read_samples
from tasks.demo.sample_data import generate
from tasks.ingest.ingest import ingest_step, source_fingerprint
from tasks.nightly.landing import labelled_images, landed_since

BOMB = """<?xml version="1.0"?>
<!DOCTYPE annotation [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>
<annotation verified="yes"><filename>{name}</filename><object><name>&lol2;</name></object>
</annotation>"""


def as_labelimg_saves(xml: Path, verified: bool | None) -> None:
    """LabelImg rewrites the whole file; "Verify Image" puts verified="yes" on the root."""
    mark = {True: ' verified="yes"', False: ' verified="no"', None: ""}[verified]
    text = xml.read_text().replace("<annotation>", f"<annotation{mark}>", 1)
    assert mark in text
    xml.write_text(text)


def line_with_inbox(tmp_path: Path) -> tuple[SourceConfig, Path, list[str]]:
    """A main source of 3 labelled images; an inbox of 5: a and b verified, c a pre-label
    (verified="no"), d without XML, e an entity bomb that claims to be verified."""
    generate(tmp_path / "main", count=3, size=48, seed=1, troubles=False)
    generate(tmp_path / "made", count=5, size=48, seed=2, troubles=False)
    inbox = tmp_path / "inbox"
    shutil.copytree(tmp_path / "made" / "images", inbox)
    stems = sorted(p.stem for p in inbox.iterdir())
    for stem, verified in zip(stems[:3], (True, True, False), strict=True):
        xml = inbox / f"{stem}.xml"
        shutil.copy(tmp_path / "made" / "annotations" / f"{stem}.xml", xml)
        as_labelimg_saves(xml, verified)
    image_e = next(inbox.glob(f"{stems[4]}.*"))
    (inbox / f"{stems[4]}.xml").write_text(BOMB.format(name=image_e.name))
    source = SourceConfig(format="voc", images=tmp_path / "main" / "images",
                          annotations=tmp_path / "main" / "annotations", verified_inbox=inbox)
    return source, inbox, stems


def test_only_the_xmls_a_person_verified_are_read_and_every_image_is_counted(tmp_path):
    source, inbox, stems = line_with_inbox(tmp_path)
    ingested = ingest_step(source, ANY_LABEL, tmp_path / "manifests")
    items = sorted(sample.item for sample in read_samples(ingested.candidates))
    main = sorted(p.name for p in (tmp_path / "main" / "annotations").glob("*.xml"))
    assert items == sorted(main + [f"inbox/{stems[0]}.xml", f"inbox/{stems[1]}.xml"])
    rejected = {r.item: r.reason for r in read_rejections(ingested.rejected)}
    assert rejected == {f"inbox/{stems[4]}.xml": "xml_forbidden"}  # refused, not followed
    # the pre-label (c) and the image without XML (d) are neither labels nor quarantined
    assert ingested.inbox == {"xmls_read": 3, "waiting": 1}
    assert ingested.images_found == 3 + 2 + 1


def test_a_prelabel_or_an_unlabelled_image_is_not_new_but_a_verified_xml_is(tmp_path):
    source, inbox, stems = line_with_inbox(tmp_path)
    before, seen = source_fingerprint(source), labelled_images(source)
    # a, b and e: an XML whose mark cannot be read lands too, to be quarantined by its reason
    assert sorted(Path(p).stem for p in seen if Path(p).parent == inbox) == [*stems[:2], stems[4]]
    # the night writes a pre-label for d; a new photo arrives unlabelled
    shutil.copy(tmp_path / "made" / "annotations" / f"{stems[3]}.xml", inbox / f"{stems[3]}.xml")
    as_labelimg_saves(inbox / f"{stems[3]}.xml", verified=False)
    shutil.copy(next(inbox.glob(f"{stems[0]}.*")), inbox / "new-photo.png")
    assert source_fingerprint(source) == before
    assert landed_since(seen, labelled_images(source)) == []
    # a person corrects c's pre-label in LabelImg and marks it verified
    text = (inbox / f"{stems[2]}.xml").read_text()
    (inbox / f"{stems[2]}.xml").write_text(
        text.replace('verified="no"', 'verified="yes"').replace("<xmin>", "<xmin>1"))
    assert source_fingerprint(source) != before
    landed = landed_since(seen, labelled_images(source))
    assert [Path(p).stem for p in landed] == [stems[2]]
