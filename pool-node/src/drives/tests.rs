use std::fs;
use std::os::unix::fs::FileExt;

use super::device::extent_len;
use super::label::{LABEL_LEN, MIN_DEVICE_CAPACITY};
use super::*;

const POOL: [u8; 16] = [7; 16];

fn id(stripe: u64, gen: u16, index: usize) -> ChunkId {
    ChunkId { stripe, gen, index }
}

fn slot(drive: usize, chunk: ChunkId, place: u64, len: usize) -> ChunkSlot {
    ChunkSlot {
        drive,
        chunk,
        place,
        len,
    }
}

/// A blank regular file of `mib` MiB to stand in for a block device.
fn blank_device(dir: &Path, name: &str, mib: u64) -> PathBuf {
    let path = dir.join(name);
    let file = fs::File::create(&path).unwrap();
    file.set_len(mib << 20).unwrap();
    path
}

/// Two directory drives, then two device drives.
fn mixed(dir: &Path) -> (Drives, Vec<PathBuf>) {
    let paths = vec![
        dir.join("d0"),
        dir.join("d1"),
        blank_device(dir, "dev2", 8),
        blank_device(dir, "dev3", 8),
    ];
    (Drives::open(POOL, paths.clone(), &[], &[]), paths)
}

#[test]
fn a_written_chunk_reads_back_on_either_kind_of_drive() {
    let dir = tempfile::tempdir().unwrap();
    let (d, _) = mixed(dir.path());
    assert_eq!(d.len(), 4);
    let payload: Vec<u8> = (0..4096u32).map(|i| i as u8).collect();
    let chunk = id(0x1234_5678, 3, 2);
    for drive in 0..4 {
        let place = d.write_chunk(drive, chunk, &payload).unwrap();
        let at = slot(drive, chunk, place, 4096);
        assert!(d.has_chunk(&at));
        assert_eq!(d.read_chunk(&at).unwrap(), payload);
        // Another chunk's name is not there; on a device, the header must
        // give the length asked for too.
        assert!(!d.has_chunk(&slot(drive, id(0x1234_5678, 4, 2), place, 4096)));
        assert_eq!(d.has_chunk(&slot(drive, chunk, place, 4095)), drive < 2);
        d.remove_chunk(&at);
        d.remove_chunk(&at);
    }
    // A drive the pool no longer has.
    assert!(matches!(
        d.read_chunk(&slot(9, chunk, 0, 4096)),
        Err(ChunkError::Missing { drive: 9, .. })
    ));
    assert!(matches!(
        d.read_chunk(&slot(1, id(5, 0, 0), 0, 4096)),
        Err(ChunkError::Missing { drive: 1, .. })
    ));
}

#[test]
fn every_damage_to_a_chunk_file_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let d = Drives::open(POOL, Drives::default_paths(dir.path()), &[], &[]);
    let payload = vec![0x5a; 256];
    let chunk = id(7, 1, 1);
    d.write_chunk(0, chunk, &payload).unwrap();
    let file_of = |chunk: ChunkId| match &*d.drives[0].read().unwrap() {
        Drive::Directory(dir) => dir.chunk_path(chunk),
        _ => unreachable!("drive 0 is a directory"),
    };
    let path = file_of(chunk);
    let good = fs::read(&path).unwrap();
    assert_eq!(good.len(), HEADER_LEN + 256);
    let at = slot(0, chunk, 0, 256);
    for byte in 0..good.len() {
        let mut bad = good.clone();
        bad[byte] ^= 0x10;
        fs::write(&path, &bad).unwrap();
        assert!(
            matches!(d.read_chunk(&at), Err(ChunkError::Damaged { .. })),
            "a flipped bit at byte {byte} was not caught"
        );
    }
    fs::write(&path, &good[..good.len() - 1]).unwrap();
    assert!(d.read_chunk(&at).is_err());
    // The right bytes under another chunk's name are not that chunk.
    fs::write(&path, &good).unwrap();
    for other in [id(7, 1, 2), id(7, 2, 1), id(8, 1, 1)] {
        fs::create_dir_all(file_of(other).parent().unwrap()).unwrap();
        fs::copy(&path, file_of(other)).unwrap();
        assert!(matches!(
            d.read_chunk(&slot(0, other, 0, 256)),
            Err(ChunkError::Damaged { .. })
        ));
    }
}

#[test]
fn every_damage_to_a_chunk_on_a_device_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let (d, paths) = mixed(dir.path());
    let payload = vec![0xa5; 300];
    let chunk = id(11, 0, 3);
    let place = d.write_chunk(2, chunk, &payload).unwrap();
    assert_eq!(place % 4096, 0);
    let device = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&paths[2])
        .unwrap();
    let mut good = vec![0u8; HEADER_LEN + 300];
    device.read_exact_at(&mut good, place).unwrap();
    let at = slot(2, chunk, place, 300);
    for byte in 0..good.len() {
        let mut bad = good.clone();
        bad[byte] ^= 0x01;
        device.write_all_at(&bad, place).unwrap();
        assert!(
            matches!(d.read_chunk(&at), Err(ChunkError::Damaged { .. })),
            "a flipped bit at byte {byte} was not caught"
        );
    }
    device.write_all_at(&good, place).unwrap();
    assert_eq!(d.read_chunk(&at).unwrap(), payload);
    // Another chunk's name, another place, or a place off the drive.
    for wrong in [
        slot(2, id(11, 0, 2), place, 300),
        slot(2, id(11, 1, 3), place, 300),
        slot(2, chunk, place + 4096, 300),
        slot(2, chunk, 0, 300),
        slot(2, chunk, 8 << 20, 300),
        slot(2, chunk, u64::MAX - 100, 300),
    ] {
        assert!(
            matches!(d.read_chunk(&wrong), Err(ChunkError::Damaged { .. })),
            "{wrong:?}"
        );
    }
}

#[test]
fn device_extents_are_reused_only_once_released_and_fill_up() {
    let dir = tempfile::tempdir().unwrap();
    let (d, _) = mixed(dir.path());
    // 7 MiB of chunk area: 7 chunks of just under 1 MiB fit, an 8th not.
    let len = (1 << 20) - HEADER_LEN;
    let payload = vec![1u8; len];
    let places: Vec<u64> = (0..7)
        .map(|i| d.write_chunk(3, id(i, 0, 0), &payload).unwrap())
        .collect();
    let mut sorted = places.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), 7, "two chunks share an extent: {places:?}");
    assert!(matches!(
        d.write_chunk(3, id(7, 0, 0), &payload),
        Err(ChunkError::Full { drive: 3, .. })
    ));
    // Small chunks do not fit either; a released extent takes the next.
    assert!(d.write_chunk(3, id(8, 0, 0), &[2u8; 10]).is_err());
    d.remove_chunk(&slot(3, id(4, 0, 0), places[4], len));
    let again = d.write_chunk(3, id(9, 0, 0), &payload).unwrap();
    assert_eq!(again, places[4]);
    for (i, &place) in places.iter().enumerate().filter(|(i, _)| *i != 4) {
        assert_eq!(
            d.read_chunk(&slot(3, id(i as u64, 0, 0), place, len))
                .unwrap(),
            payload
        );
    }
}

#[test]
fn a_reopened_device_keeps_reserved_extents_and_refuses_overlaps() {
    let dir = tempfile::tempdir().unwrap();
    let (d, paths) = mixed(dir.path());
    let a = d.write_chunk(2, id(1, 0, 0), &[1u8; 5000]).unwrap();
    let b = d.write_chunk(2, id(2, 0, 0), &[2u8; 100]).unwrap();
    // The pool opens again: the catalog names chunk 1 only (chunk 2 was
    // written but never recorded, so its extent is free).
    let kinds = d.kinds();
    drop(d);
    let mut d = Drives::open(POOL, paths.clone(), &kinds, &[]);
    let one = slot(2, id(1, 0, 0), a, 5000);
    d.reserve_all([one]);
    assert_eq!(d.offline(), vec![None; 4]);
    let next = d.write_chunk(2, id(4, 0, 0), &[4u8; 100]).unwrap();
    assert_eq!(next, b, "the unrecorded chunk's extent is reused");
    assert_eq!(d.read_chunk(&one).unwrap(), vec![1u8; 5000]);
    assert_eq!(extent_len(HEADER_LEN + 5000), 8192);
    // Chunks the catalog says overlap, or lie off the drive, take the
    // drive offline (the catalog and the drive disagree), whatever else
    // works.
    for bad in [
        slot(2, id(3, 0, 0), a + 4096, 10),
        slot(2, id(3, 0, 0), 0, 10),
        slot(2, id(3, 0, 0), a + 1, 10),
        slot(2, id(3, 0, 0), u64::MAX - 10, 10),
    ] {
        drop(d);
        let fresh = Drives::open(POOL, paths.clone(), &kinds, &[]);
        fresh.reserve_all([one, bad, slot(9, id(1, 0, 0), 0, 10)]);
        assert!(fresh.offline()[2].is_some(), "{bad:?}");
        assert_eq!(fresh.offline()[3], None);
        d = fresh;
    }
}

#[test]
fn a_replaced_blank_device_is_formatted_on_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (d, paths) = mixed(dir.path());
    let kept = slot(
        3,
        id(1, 0, 0),
        d.write_chunk(3, id(1, 0, 0), &[7u8; 64]).unwrap(),
        64,
    );
    // The disk is swapped for a blank one of another size.
    fs::remove_file(&paths[3]).unwrap();
    blank_device(dir.path(), "dev3", 12);
    d.reopen(3, Some(DriveKind::Device), &[kept]).unwrap();
    assert!(matches!(
        d.read_chunk(&kept),
        Err(ChunkError::Damaged { .. })
    ));
    // The catalog's old chunk keeps its extent until a rebuild moves it.
    let new = d.write_chunk(3, id(2, 0, 0), &[8u8; 64]).unwrap();
    assert_ne!(new, kept.place);
    assert_eq!(
        d.read_chunk(&slot(3, id(2, 0, 0), new, 64)).unwrap(),
        vec![8u8; 64]
    );
    // Directory drives come back too, even if the directory went.
    fs::remove_dir_all(&paths[1]).unwrap();
    d.reopen(1, Some(DriveKind::Directory), &[]).unwrap();
    assert!(paths[1].join("drive-label").is_file());
    // A directory where a device was is not taken for one.
    fs::remove_file(&paths[3]).unwrap();
    fs::create_dir(&paths[3]).unwrap();
    assert!(d.reopen(3, Some(DriveKind::Device), &[]).is_err());
    assert!(d.offline()[3].is_some());
}

#[test]
fn drives_that_are_not_blank_or_belong_elsewhere_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let open = |number: usize, path: &Path, may_label: bool| {
        DeviceDrive::open(number, path.to_path_buf(), &POOL, may_label).map(drop)
    };
    let refused = |result: anyhow::Result<()>, why: &str| {
        let err = result.expect_err(why);
        assert!(format!("{err:#}").contains(why), "{err:#}");
    };
    // Someone's data in the first MiB.
    let used = blank_device(dir.path(), "used", 8);
    fs::OpenOptions::new()
        .write(true)
        .open(&used)
        .unwrap()
        .write_all_at(b"ext4 superblock, say", 1024)
        .unwrap();
    refused(open(0, &used, true), "not blank");
    // Too small.
    let tiny = blank_device(dir.path(), "tiny", 1);
    refused(open(0, &tiny, true), "too small");
    // A blank device is labelled only when that is allowed.
    let dev = blank_device(dir.path(), "dev", 8);
    refused(open(0, &dev, false), "no label");
    open(0, &dev, true).unwrap();
    open(0, &dev, false).unwrap();
    // Labelled as drive 0, opened as drive 1 (the --drive list reordered),
    // or by another pool.
    refused(open(1, &dev, true), "labelled drive 0");
    refused(
        DeviceDrive::open(0, dev.clone(), &[8; 16], true).map(drop),
        "another pool",
    );
    // In use by another opener.
    let held = DeviceDrive::open(0, dev.clone(), &POOL, false).unwrap();
    refused(open(0, &dev, false), "another process");
    drop(held);
    // Shrunk below its label's capacity.
    fs::OpenOptions::new()
        .write(true)
        .open(&dev)
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    refused(open(0, &dev, false), "smaller than");
    // A damaged label is an error, never a relabel.
    let dev = blank_device(dir.path(), "dev-b", 8);
    open(0, &dev, true).unwrap();
    let file = fs::OpenOptions::new().write(true).open(&dev).unwrap();
    file.write_all_at(&[0xff], 33).unwrap();
    refused(open(0, &dev, true), "damaged label");
    // A directory drive: labelled once, then only its own label will do.
    let d = dir.path().join("dir");
    let open_dir = |number: usize, pool: &[u8; 16], may_label: bool| {
        DirectoryDrive::open(number, d.clone(), pool, may_label).map(drop)
    };
    refused(open_dir(0, &POOL, false), "no label");
    open_dir(0, &POOL, true).unwrap();
    open_dir(0, &POOL, false).unwrap();
    refused(open_dir(2, &POOL, true), "labelled drive 0");
    refused(open_dir(0, &[8; 16], true), "another pool");
    // Drive kinds are kept: a device path that is missing is offline, not
    // a directory to create.
    let d = Drives::open(
        POOL,
        vec![
            dir.path().join("gone-device"),
            "/dev/strata-no-such-disk".into(),
        ],
        &[Some(DriveKind::Device), None],
        &[],
    );
    assert!(d.offline().iter().all(Option::is_some));
    assert!(!dir.path().join("gone-device").exists());
    assert!(!Path::new("/dev/strata-no-such-disk").exists());
}

#[test]
fn every_damage_to_a_label_is_caught() {
    let label = DriveLabel {
        pool: POOL,
        number: 5,
        kind: DriveKind::Device,
        capacity: 64 << 20,
    };
    let good = encode_label(&label);
    assert_eq!(decode_label(&good), Ok(Some(label)));
    for bit in 64..LABEL_LEN * 8 {
        let mut bad = good;
        bad[bit / 8] ^= 1 << (bit % 8);
        assert!(decode_label(&bad).is_err(), "bit {bit}");
    }
    // A flipped magic bit means no label, which opening treats as a
    // device that is not blank.
    let mut bad = good;
    bad[0] ^= 1;
    assert_eq!(decode_label(&bad), Ok(None));
    for cut in 0..LABEL_LEN {
        assert!(decode_label(&good[..cut]).is_err());
    }
    // Capacities that do not fit the kind, with a right checksum.
    for (kind, capacity) in [
        (DriveKind::Device, MIN_DEVICE_CAPACITY - 4096),
        (DriveKind::Device, (1 << 20) + 1),
        (DriveKind::Device, 0),
        (DriveKind::Directory, 4096),
    ] {
        let odd = encode_label(&DriveLabel {
            kind,
            capacity,
            ..label
        });
        assert!(decode_label(&odd).is_err(), "{kind:?} of {capacity} bytes");
    }
}

proptest::proptest! {
    /// Any bytes decode to a label that re-encodes to them, no label, or
    /// an error; never a panic.
    #[test]
    fn arbitrary_label_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
        if let Ok(Some(label)) = decode_label(&bytes) {
            proptest::prop_assert_eq!(&encode_label(&label)[..], &bytes[..LABEL_LEN]);
        }
    }
}

#[test]
fn a_pool_from_before_labels_adopts_only_directories_holding_its_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let held = id(0x2345, 0, 1);
    let paths = vec![
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("c"),
    ];
    // Drive 0 holds the chunk the catalog places on it; drive 1's disk is
    // not mounted (an empty mount point); drive 2 the catalog never used.
    let file = directory::chunk_file(&paths[0], held);
    fs::create_dir_all(file.parent().unwrap()).unwrap();
    fs::write(&file, encode_chunk(held, b"old chunk")).unwrap();
    fs::create_dir_all(&paths[1]).unwrap();
    let used = [Some(slot(0, held, 0, 9)), Some(slot(1, held, 0, 9)), None];
    let d = Drives::open(POOL, paths.clone(), &[], &used);
    let offline = d.offline();
    assert_eq!(offline[0], None);
    assert!(
        offline[1]
            .as_deref()
            .is_some_and(|why| why.contains("no label")),
        "{offline:?}"
    );
    assert_eq!(offline[2], None);
    assert_eq!(d.read_chunk(&slot(0, held, 0, 9)).unwrap(), b"old chunk");
    assert!(paths[0].join("drive-label").is_file());
    assert!(!paths[1].join("drive-label").exists());
}
