//! The simulated protected disk: block contents drawn from a small set of patterns (so dedup
//! is everywhere), written by the applications while replication runs, and frozen views of it
//! scanned through the daemon's own scanner (`node::replication::mobility::scan_device`: the
//! read-ahead threads, the shared `DiskScan` with its hashing, diff, wire compression and
//! batching).

use super::BLOCK;
use lifeboat_actors::seams::BlockDevice;
use lifeboat_node::replication::mobility::{scan_device, Progress, ScanBuffers};
use lifeboat_protocol::vault::{BlockId, DataKey};
use lifeboat_protocol::Message;
use std::collections::VecDeque;
use std::sync::Arc;

/// The bytes of block content `v` (0 is the zero block; every third one compresses well, so
/// both the raw and the zstd path of the wire and the vault run).
pub(super) fn pattern(v: u16) -> Vec<u8> {
    if v == 0 {
        return vec![0; BLOCK];
    }
    let mut out = vec![0u8; BLOCK];
    let mut xof = blake3::Hasher::new()
        .update(&v.to_le_bytes())
        .finalize_xof();
    if v.is_multiple_of(3) {
        let mut head = [0u8; 64];
        xof.fill(&mut head);
        out.chunks_mut(64).for_each(|c| c.copy_from_slice(&head));
    } else {
        xof.fill(&mut out);
    }
    out
}

/// Every block content's bytes and id, by value.
pub(super) fn contents(patterns: u16, key: &DataKey) -> Vec<(Vec<u8>, BlockId)> {
    (0..=patterns)
        .map(|v| {
            let b = pattern(v);
            let id = if v == 0 {
                BlockId::ZERO
            } else {
                key.block_id(&b)
            };
            (b, id)
        })
        .collect()
}

/// A frozen view of the disk (what a snapshot hook gives the daemon): one content value per
/// block.
pub(super) struct View {
    pub(super) values: Vec<u16>,
    pub(super) contents: Arc<Vec<(Vec<u8>, BlockId)>>,
}

impl BlockDevice for View {
    fn describe(&self) -> String {
        "simulated disk".into()
    }

    fn size(&self) -> u64 {
        (self.values.len() * BLOCK) as u64
    }

    fn read_at(&self, at: u64, buf: &mut [u8]) -> Result<(), String> {
        if at + buf.len() as u64 > self.size() {
            return Err(format!("read past the end of the disk at byte {at}"));
        }
        let mut pos = 0;
        while pos < buf.len() {
            let byte = at as usize + pos;
            let (blk, off) = (byte / BLOCK, byte % BLOCK);
            let src = &self.contents[self.values[blk] as usize].0[off..];
            let n = src.len().min(buf.len() - pos);
            buf[pos..pos + n].copy_from_slice(&src[..n]);
            pos += n;
        }
        Ok(())
    }
}

/// The replication stream of `view` against the base's hash map `old`, as the daemon's
/// scanner cuts it; and the view's hash map (the change log's next map once it commits).
pub(super) fn delta(
    view: View,
    buffers: &Arc<ScanBuffers>,
    old: Option<Vec<[u8; 32]>>,
) -> Result<(VecDeque<Message>, Vec<[u8; 32]>), String> {
    let mut msgs = VecDeque::new();
    let progress = Progress::default();
    let (hashes, sent) = scan_device(
        Arc::new(view),
        buffers,
        BLOCK as u32,
        old,
        &progress,
        &|| 0,
        |blocks| {
            msgs.push_back(Message::DeltaBlocks { disk: 0, blocks });
            Ok(())
        },
    )?;
    msgs.push_back(Message::DeltaEnd {
        sent_blocks: sent,
        freeze_ms: None,
    });
    Ok((msgs, hashes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use lifeboat_protocol::vault;

    /// The daemon's scanner over a view sends exactly the blocks that differ from the base,
    /// each with its bytes (zero blocks as markers), and the full copy every non-zero block.
    #[test]
    fn the_scanner_sends_exactly_the_changed_blocks_of_a_view() {
        let key = DataKey::from_master([1; 32]);
        let contents = Arc::new(contents(30, &key));
        let first: Vec<u16> = (0..1100).map(|i| (i % 31) as u16).collect();
        let mut second = first.clone();
        for (i, v) in [(3, 0), (500, 7), (1099, 9), (1030, 3)] {
            second[i] = v;
        }
        let bufs = Arc::default();
        let view = |values: &Vec<u16>| View {
            values: values.clone(),
            contents: contents.clone(),
        };
        let sent = |msgs: &VecDeque<Message>| -> Vec<(u64, Option<Vec<u8>>)> {
            let mut out = Vec::new();
            for m in msgs {
                if let Message::DeltaBlocks { blocks, .. } = m {
                    for b in blocks {
                        let data = b.data.as_ref().map(|d| {
                            if b.zstd {
                                vault::decompress_block(d, BLOCK).unwrap()
                            } else {
                                d.to_vec()
                            }
                        });
                        out.push((b.index, data));
                    }
                }
            }
            out
        };
        let (msgs, map) = delta(view(&first), &bufs, None).unwrap();
        let full = sent(&msgs);
        assert_eq!(full.len(), first.iter().filter(|v| **v != 0).count());
        for (i, data) in &full {
            assert_eq!(
                data.as_deref(),
                Some(&contents[first[*i as usize] as usize].0[..])
            );
        }
        let (msgs, _) = delta(view(&second), &bufs, Some(map)).unwrap();
        let got = sent(&msgs);
        let want: Vec<(u64, Option<Vec<u8>>)> = (0..second.len())
            .filter(|i| first[*i] != second[*i])
            .map(|i| {
                let v = second[i];
                (i as u64, (v != 0).then(|| contents[v as usize].0.clone()))
            })
            .collect();
        assert_eq!(got, want);
        assert!(
            matches!(msgs.back(), Some(Message::DeltaEnd { sent_blocks: 4, .. })),
            "the stream ends with the count"
        );
    }
}
