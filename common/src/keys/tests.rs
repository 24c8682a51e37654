use std::os::unix::fs::PermissionsExt;

use super::*;
use proptest::prelude::*;

fn master(b: u8) -> MasterKey {
    MasterKey::from_bytes([b; KEY_LEN])
}

fn keys_dir() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("keys");
    (tmp, dir)
}

fn same(a: &FrameKeys, b: &FrameKeys) -> bool {
    a.data_key == b.data_key && a.dedupe_key == b.dedupe_key
}

#[test]
fn create_then_load_gives_identical_keys() {
    let (_tmp, dir) = keys_dir();
    let m = master(7);
    let created = DatastoreKeys::load_or_create(&dir, "ds1", &m).unwrap();
    let again = DatastoreKeys::load_or_create(&dir, "ds1", &m).unwrap();
    let loaded = DatastoreKeys::load(&dir, "ds1", &m).unwrap();
    assert!(same(&created, &again));
    assert!(same(&created, &loaded));
    assert_ne!(created.data_key, created.dedupe_key);
    assert_ne!(created.data_key, [0; KEY_LEN]);
    let bytes = fs::read(dir.join("ds1.key")).unwrap();
    assert_eq!(bytes.len(), KEY_FILE_LEN);
    // No temporary files left behind.
    let names: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![OsString::from("ds1.key")]);
}

#[test]
fn key_file_never_holds_plain_keys() {
    let (_tmp, dir) = keys_dir();
    let k = DatastoreKeys::load_or_create(&dir, "ds", &master(1)).unwrap();
    let bytes = fs::read(dir.join("ds.key")).unwrap();
    assert!(!bytes.windows(8).any(|w| w == &k.data_key[..8]));
    assert!(!bytes.windows(8).any(|w| w == &k.dedupe_key[..8]));
}

#[test]
fn two_datastores_get_different_keys() {
    let (_tmp, dir) = keys_dir();
    let m = master(7);
    let a = DatastoreKeys::load_or_create(&dir, "a", &m).unwrap();
    let b = DatastoreKeys::load_or_create(&dir, "b", &m).unwrap();
    assert_ne!(a.data_key, b.data_key);
    assert_ne!(a.dedupe_key, b.dedupe_key);
}

#[test]
fn load_missing_is_typed() {
    let (_tmp, dir) = keys_dir();
    let err = DatastoreKeys::load(&dir, "nope", &master(1)).unwrap_err();
    assert!(matches!(err, KeyError::KeyFileMissing { .. }), "{err}");
}

#[test]
fn wrong_master_key_errors() {
    let (_tmp, dir) = keys_dir();
    DatastoreKeys::load_or_create(&dir, "ds", &master(1)).unwrap();
    let err = DatastoreKeys::load_or_create(&dir, "ds", &master(2)).unwrap_err();
    assert!(matches!(err, KeyError::WrongMasterKey { .. }), "{err}");
    assert!(err.to_string().contains("different master key"));
}

#[test]
fn wrong_master_key_with_forged_check_still_errors() {
    // Even if the check value is rewritten to match another master key
    // (and the checksum fixed up), the tags fail: never garbage keys.
    let (_tmp, dir) = keys_dir();
    DatastoreKeys::load_or_create(&dir, "ds", &master(1)).unwrap();
    let path = dir.join("ds.key");
    let mut bytes = fs::read(&path).unwrap();
    let other = master(2);
    bytes[CHECK_OFF..AAD_PREFIX_LEN].copy_from_slice(&other.check_value());
    let sum = checksum(&bytes[..SUM_OFF]);
    bytes[SUM_OFF..].copy_from_slice(&sum);
    let err = decode_key_file(&bytes, "ds", &other, &path).unwrap_err();
    assert!(matches!(err, KeyError::WrongDatastore { .. }), "{err}");
}

#[test]
fn key_file_moved_to_another_datastore_errors() {
    let (_tmp, dir) = keys_dir();
    let m = master(3);
    DatastoreKeys::load_or_create(&dir, "alpha", &m).unwrap();
    fs::rename(dir.join("alpha.key"), dir.join("beta.key")).unwrap();
    let err = DatastoreKeys::load_or_create(&dir, "beta", &m).unwrap_err();
    assert!(matches!(err, KeyError::WrongDatastore { .. }), "{err}");
    assert!(err.to_string().contains("\"beta\""));
}

#[test]
fn swapped_wrapped_keys_error() {
    let (_tmp, dir) = keys_dir();
    let m = master(3);
    DatastoreKeys::load_or_create(&dir, "ds", &m).unwrap();
    let path = dir.join("ds.key");
    let mut bytes = fs::read(&path).unwrap();
    let data: Vec<u8> = bytes[DATA_OFF..DEDUPE_OFF].to_vec();
    let dedupe: Vec<u8> = bytes[DEDUPE_OFF..SUM_OFF].to_vec();
    bytes[DATA_OFF..DEDUPE_OFF].copy_from_slice(&dedupe);
    bytes[DEDUPE_OFF..SUM_OFF].copy_from_slice(&data);
    let sum = checksum(&bytes[..SUM_OFF]);
    bytes[SUM_OFF..].copy_from_slice(&sum);
    let err = decode_key_file(&bytes, "ds", &m, &path).unwrap_err();
    assert!(matches!(err, KeyError::WrongDatastore { .. }), "{err}");
}

#[test]
fn truncated_and_garbled_files_error() {
    let (_tmp, dir) = keys_dir();
    let m = master(4);
    DatastoreKeys::load_or_create(&dir, "ds", &m).unwrap();
    let path = dir.join("ds.key");
    let good = fs::read(&path).unwrap();

    for len in [0, 3, 4, 5, 100, KEY_FILE_LEN - 1] {
        fs::write(&path, &good[..len]).unwrap();
        let err = DatastoreKeys::load(&dir, "ds", &m).unwrap_err();
        assert!(matches!(err, KeyError::Corrupt { .. }), "len {len}: {err}");
    }
    let mut padded = good.clone();
    padded.push(0);
    fs::write(&path, &padded).unwrap();
    let err = DatastoreKeys::load(&dir, "ds", &m).unwrap_err();
    assert!(matches!(err, KeyError::Corrupt { .. }), "{err}");

    // Every single-byte change is caught.
    for i in 0..KEY_FILE_LEN {
        let mut bad = good.clone();
        bad[i] ^= 0x01;
        let err = decode_key_file(&bad, "ds", &m, &path).unwrap_err();
        assert!(
            matches!(
                err,
                KeyError::Corrupt { .. } | KeyError::UnsupportedVersion { .. }
            ),
            "byte {i}: {err}"
        );
    }
    let mut v2 = good.clone();
    v2[4] = 2;
    let err = decode_key_file(&v2, "ds", &m, &path).unwrap_err();
    assert!(
        matches!(err, KeyError::UnsupportedVersion { found: 2, .. }),
        "{err}"
    );
}

#[test]
fn key_file_mode_is_0600() {
    let (_tmp, dir) = keys_dir();
    DatastoreKeys::load_or_create(&dir, "ds", &master(5)).unwrap();
    let mode = fs::metadata(dir.join("ds.key")).unwrap().mode() & 0o7777;
    assert_eq!(mode, 0o600);
    let dir_mode = fs::metadata(&dir).unwrap().mode() & 0o7777;
    assert_eq!(dir_mode & 0o077, 0, "dir mode {dir_mode:o}");
}

#[test]
fn group_or_other_readable_key_file_is_refused() {
    let (_tmp, dir) = keys_dir();
    let m = master(5);
    DatastoreKeys::load_or_create(&dir, "ds", &m).unwrap();
    let path = dir.join("ds.key");
    for mode in [0o640, 0o604, 0o660, 0o644] {
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        let err = DatastoreKeys::load_or_create(&dir, "ds", &m).unwrap_err();
        assert!(
            matches!(err, KeyError::InsecurePermissions { mode: m, .. } if m == mode),
            "{err}"
        );
        assert!(err.to_string().contains("chmod 600"));
    }
    fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
    DatastoreKeys::load(&dir, "ds", &m).unwrap();
}

#[test]
fn symlinked_key_file_is_refused() {
    let (_tmp, dir) = keys_dir();
    let m = master(5);
    DatastoreKeys::load_or_create(&dir, "real", &m).unwrap();
    std::os::unix::fs::symlink(dir.join("real.key"), dir.join("link.key")).unwrap();
    let err = DatastoreKeys::load(&dir, "link", &m).unwrap_err();
    assert!(matches!(err, KeyError::NotRegularFile { .. }), "{err}");
}

#[test]
fn invalid_datastore_names_are_refused() {
    let (_tmp, dir) = keys_dir();
    let long = "x".repeat(MAX_DATASTORE_NAME_LEN + 1);
    for name in ["", ".hidden", "../up", "a/b", "sp ace", "é", long.as_str()] {
        let err = DatastoreKeys::load_or_create(&dir, name, &master(1)).unwrap_err();
        assert!(
            matches!(err, KeyError::InvalidDatastoreName { .. }),
            "{name:?}: {err}"
        );
    }
    validate_datastore_name("pool-1_a.b").unwrap();
    validate_datastore_name(&"x".repeat(MAX_DATASTORE_NAME_LEN)).unwrap();
}

#[test]
fn concurrent_creators_agree() {
    let (_tmp, dir) = keys_dir();
    let results: Vec<FrameKeys> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| s.spawn(|| DatastoreKeys::load_or_create(&dir, "ds", &master(9)).unwrap()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for k in &results[1..] {
        assert!(same(k, &results[0]));
    }
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
}

#[test]
fn debug_and_errors_show_no_key_bytes() {
    let (_tmp, dir) = keys_dir();
    let m = MasterKey::from_bytes([0xab; KEY_LEN]);
    let k = DatastoreKeys::load_or_create(&dir, "ds", &m).unwrap();
    let dbg = format!("{m:?} {k:?} {m:#?} {k:#?}");
    assert!(!dbg.to_lowercase().contains("ab, "));
    assert!(!dbg.contains("171"));
    for key in [&k.data_key, &k.dedupe_key] {
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        assert!(!dbg.contains(&hex[..8]));
        assert!(!dbg.contains(&format!("{}, {}", key[0], key[1])));
    }
    assert_eq!(format!("{m:?}"), "MasterKey { .. }");

    let secret = "0123456789abcdef".repeat(4);
    let err = MasterKey::from_env_value(Some(format!("{secret}zz").into())).unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(!text.contains("0123456789abcdef"), "{text}");
}

#[test]
fn env_value_parsing() {
    let hex = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF";
    let m = MasterKey::from_env_value(Some(format!("  {hex}\n").into()))
        .unwrap()
        .unwrap();
    assert_eq!(m.key[0], 0x00);
    assert_eq!(m.key[1], 0x11);
    assert_eq!(m.key[31], 0xff);
    assert!(MasterKey::from_env_value(None).unwrap().is_none());

    let bad = |v: &str| match MasterKey::from_env_value(Some(v.into())) {
        Err(KeyError::BadMasterKey {
            from: KeySource::Env,
            problem,
        }) => problem,
        other => panic!("{v:?}: {other:?}"),
    };
    assert_eq!(bad(""), MasterKeyProblem::Empty);
    assert_eq!(bad("  \n"), MasterKeyProblem::Empty);
    assert_eq!(bad(&hex[..62]), MasterKeyProblem::WrongLength { found: 62 });
    assert_eq!(
        bad(&format!("{hex}00")),
        MasterKeyProblem::WrongLength { found: 66 }
    );
    let mut g = hex.to_string();
    g.replace_range(9..10, "g");
    assert_eq!(bad(&g), MasterKeyProblem::NotHex { position: 9 });
    let e = MasterKey::from_env_value(Some("x".into())).unwrap_err();
    assert!(e.to_string().contains(MASTER_KEY_ENV), "{e}");

    use std::os::unix::ffi::OsStringExt;
    let err = MasterKey::from_env_value(Some(OsString::from_vec(vec![0xff; 64]))).unwrap_err();
    assert!(matches!(
        err,
        KeyError::BadMasterKey {
            problem: MasterKeyProblem::NotUnicode,
            ..
        }
    ));
}

#[test]
fn master_key_from_file() {
    let tmp = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: &[u8], mode: u32| {
        let p = tmp.path().join(name);
        fs::write(&p, bytes).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        p
    };
    let raw = write("raw", &[0x5a; 32], 0o600);
    let hex = write("hex", format!("{}\n", "5a".repeat(32)).as_bytes(), 0o400);
    let a = MasterKey::from_file(&raw).unwrap();
    let b = MasterKey::from_env_or_file(Some(&hex)).unwrap();
    assert_eq!(*a.key, [0x5a; 32]);
    assert_eq!(*b.key, [0x5a; 32]);

    let short = write("short", &[1; 31], 0o600);
    let err = MasterKey::from_file(&short).unwrap_err();
    assert!(
        matches!(&err, KeyError::BadMasterKey { from: KeySource::File(p), problem: MasterKeyProblem::WrongLength { found: 31 } } if p == &short),
        "{err}"
    );
    assert!(err.to_string().contains("short"), "{err}");

    let open = write("open", &[1; 32], 0o644);
    assert!(matches!(
        MasterKey::from_file(&open).unwrap_err(),
        KeyError::InsecurePermissions { .. }
    ));
    let missing = tmp.path().join("missing");
    let err = MasterKey::from_file(&missing).unwrap_err();
    assert!(matches!(err, KeyError::Io { .. }), "{err}");
    assert!(err.to_string().contains("missing"), "{err}");
}

proptest! {
    #[test]
    fn arbitrary_key_file_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let m = master(6);
        let _ = decode_key_file(&bytes, "ds", &m, Path::new("x.key"));
    }

    #[test]
    fn mutated_key_files_never_yield_keys(
        flips in proptest::collection::vec((0..KEY_FILE_LEN, 1u8..=255), 1..6),
    ) {
        let m = master(6);
        let d = Zeroizing::new([1u8; KEY_LEN]);
        let f = Zeroizing::new([2u8; KEY_LEN]);
        let good = encode_key_file(&d, &f, &[3; 2 * NONCE_LEN], "ds", &m, Path::new("x")).unwrap();
        let mut bad = good;
        for (i, x) in flips {
            bad[i] ^= x;
        }
        prop_assert!(decode_key_file(&bad, "ds", &m, Path::new("x")).is_err());
    }

    #[test]
    fn arbitrary_master_key_text_never_panics(text in proptest::collection::vec(any::<u8>(), 0..100)) {
        let _ = MasterKey::from_hex(&text);
    }
}
