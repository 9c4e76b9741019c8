//! Unit tests.

use super::*;
use proptest::prelude::*;

fn key() -> DataKey {
    DataKey::from_master([7; 32])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn blocks_round_trip_through_seal_and_open(data in proptest::collection::vec(any::<u8>(), 0..70_000)) {
        let k = key();
        let id = k.block_id(&data);
        let sealed = k.seal_block(&id, &data, 1, [7; 12]);
        prop_assert_eq!(k.open_block(&id, &sealed, data.len().max(1)).unwrap(), data);
    }

    #[test]
    fn opening_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let k = key();
        let _ = k.open_block(&BlockId([1; 32]), &bytes, 65536);
        let _ = k.open_object("point", &bytes);
        let _ = PointRecord::open(&k, "points/x/y", &bytes);
        let _ = k.open_chunk(&BlockId([1; 32]), &bytes);
    }
}

#[test]
fn a_rotated_key_seals_new_objects_and_still_opens_old_ones() {
    let old = key();
    let data = vec![9u8; 4096];
    let id = old.block_id(&data);
    let before = old.seal_block(&id, &data, 1, [1; 12]);
    let new = DataKey::with_rotations([7; 32], vec![[42; 32]]);
    assert_eq!(
        new.key_check(),
        old.key_check(),
        "ids and the check do not change"
    );
    assert_eq!(
        new.block_id(&data),
        id,
        "deduplication carries across a rotation"
    );
    assert_eq!(new.open_block(&id, &before, 4096).unwrap(), data);
    let after = new.seal_block(&id, &data, 1, [2; 12]);
    assert_eq!(new.open_block(&id, &after, 4096).unwrap(), data);
    // Whoever holds only the old key cannot read or forge what is sealed after it.
    assert_eq!(old.open_block(&id, &after, 4096), Err(FormatError::Auth));
    let obj = new.seal_object("idx", [3; 12], b"index");
    assert_eq!(old.open_object("idx", &obj), Err(FormatError::Auth));
    assert_eq!(new.open_object("idx", &obj).unwrap(), b"index");
}

#[test]
fn a_point_opens_only_under_its_own_name() {
    let k = key();
    let machine: NodeId = crate::StaticKeypair::generate([1; 32]).public.node_id();
    let other: NodeId = crate::StaticKeypair::generate([2; 32]).public.node_id();
    let rec = PointRecord {
        format: 1,
        id: "ab".repeat(16),
        machine,
        machine_name: "web".into(),
        captured: UnixMillis(5),
        committed: UnixMillis(6),
        consistency: Consistency::CrashConsistent,
        parent: None,
        disks: vec![],
        stats: PointStats::default(),
    };
    let sealed = rec.seal(&k, [3; 12]);
    assert_eq!(
        PointRecord::open(&k, &rec.object_key(), &sealed),
        Ok(rec.clone())
    );
    // Copied under another machine's prefix, or renamed to another time: refused.
    let moved = point_key(&other, rec.captured, &rec.id);
    assert_eq!(
        PointRecord::open(&k, &moved, &sealed),
        Err(FormatError::Auth)
    );
    let renamed = point_key(&machine, UnixMillis(99), &rec.id);
    assert_eq!(
        PointRecord::open(&k, &renamed, &sealed),
        Err(FormatError::Auth)
    );
    // A point sealed before the binding opens under its own name only.
    let legacy = k.seal_object("point", [4; 12], &to_rmp(&rec));
    assert_eq!(
        PointRecord::open(&k, &rec.object_key(), &legacy),
        Ok(rec.clone())
    );
    assert!(matches!(
        PointRecord::open(&k, &moved, &legacy),
        Err(FormatError::Malformed { .. })
    ));
}

#[test]
fn a_flipped_bit_or_another_key_fails_to_open() {
    let k = key();
    let data = vec![42u8; 65536];
    let id = k.block_id(&data);
    let mut sealed = k.seal_block(&id, &data, 1, [7; 12]);
    assert_eq!(k.open_block(&id, &sealed, 65536).unwrap(), data);
    assert_eq!(
        DataKey::from_master([8; 32]).open_block(&id, &sealed, 65536),
        Err(FormatError::Auth)
    );
    sealed[20] ^= 1;
    assert_eq!(k.open_block(&id, &sealed, 65536), Err(FormatError::Auth));
    let other = k.block_id(b"x");
    assert_eq!(
        k.open_block(&other, &k.seal_block(&id, &data, 1, [7; 12]), 65536),
        Err(FormatError::Auth)
    );
}

#[test]
fn a_block_sealed_twice_uses_each_callers_nonce_and_both_open() {
    let k = key();
    let data: Vec<u8> = (0..6000u32)
        .flat_map(|i| format!("{i} lifeboat {} ", i * 7 % 13).into_bytes())
        .take(65536)
        .collect();
    assert!(!looks_incompressible(&data));
    let id = k.block_id(&data);
    let a = k.seal_block(&id, &data, 1, [1; 12]);
    let b = k.seal_block(&id, &data, 19, [2; 12]);
    assert_eq!(a[..12], [1; 12]);
    assert_eq!(b[..12], [2; 12]);
    assert_ne!(a[12..], b[12..]);
    assert_eq!(k.open_block(&id, &a, 65536).unwrap(), data);
    assert_eq!(k.open_block(&id, &b, 65536).unwrap(), data);
    // A payload compressed elsewhere (the mobility node) seals and opens the same way.
    let (mode, z) = encode_block(&data, 1);
    assert_eq!(mode, MODE_ZSTD);
    assert!(z.len() < data.len() / 4);
    let c = k.seal_encoded(&id, mode, &z, [3; 12]);
    assert_eq!(k.open_block(&id, &c, 65536).unwrap(), data);
    assert_eq!(decompress_block(&z, 65536).unwrap(), data);
    assert!(decompress_block(&z, 1000).is_err(), "bounded output");
}

#[test]
fn random_blocks_skip_the_compressor_and_text_does_not() {
    let mut x = 88172645463325252u64;
    let random: Vec<u8> = (0..65536)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    assert!(looks_incompressible(&random));
    let text: Vec<u8> = b"lifeboat replica vault point "
        .iter()
        .copied()
        .cycle()
        .take(65536)
        .collect();
    assert!(!looks_incompressible(&text));
    assert!(!looks_incompressible(&[0u8; 65536]));
    let k = key();
    for d in [&random, &text] {
        let id = k.block_id(d);
        assert_eq!(
            &k.open_block(&id, &k.seal_block(&id, d, 1, [7; 12]), 65536)
                .unwrap(),
            d
        );
    }
}

#[test]
fn ids_are_keyed_and_compressible_blocks_shrink() {
    let data = vec![1u8; 65536];
    assert_ne!(
        key().block_id(&data),
        DataKey::from_master([8; 32]).block_id(&data)
    );
    assert_ne!(key().block_id(&data).0, *blake3::hash(&data).as_bytes());
    let k = key();
    assert!(k.seal_block(&k.block_id(&data), &data, 1, [7; 12]).len() < 1000);
}

#[test]
fn chunks_verify_against_their_ids() {
    let k = key();
    let ids: Vec<BlockId> = (0..10u8).map(|i| k.block_id(&[i])).collect();
    let id = k.chunk_id(&[3; 16], &ids);
    let sealed = k.seal_chunk(&[3; 16], &ids, [1; 12]);
    assert_eq!(k.open_chunk(&id, &sealed).unwrap(), ids);
    assert_ne!(
        k.chunk_id(&[4; 16], &ids),
        id,
        "the salt makes a new chunk id"
    );
    let wrong = k.chunk_id(&[3; 16], &ids[..9]);
    assert!(matches!(
        k.open_chunk(&wrong, &sealed),
        Err(FormatError::IdMismatch { .. })
    ));
}

#[test]
fn packs_index_their_blocks() {
    let k = key();
    let mut p = PackBuilder::new();
    let blocks: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 1000 * (i as usize + 1)]).collect();
    for b in &blocks {
        let id = k.block_id(b);
        p.add(id, &k.seal_block(&id, b, 1, [7; 12]));
    }
    let (pid, bytes, idx) = p.finish([9; 16]);
    assert_eq!(pid, idx.pack);
    assert_eq!(&bytes[..5], PACK_MAGIC);
    for (e, b) in idx.entries.iter().zip(&blocks) {
        let s = &bytes[e.offset as usize..e.offset as usize + e.len as usize];
        assert_eq!(&k.open_block(&e.id, s, 65536).unwrap(), b);
    }
}

#[test]
fn zero_detection_and_hex() {
    assert!(is_zero_block(&[0; 65536]));
    let mut b = vec![0u8; 65536];
    b[65535] = 1;
    assert!(!is_zero_block(&b));
    b[65535] = 0;
    b[3] = 1;
    assert!(!is_zero_block(&b));
    assert_eq!(from_hex::<2>("0aff"), Some([10, 255]));
    assert_eq!(from_hex::<2>("0af"), None);
    assert_eq!(from_hex::<2>("zzzz"), None);
}
