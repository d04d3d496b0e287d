//! Opening a partition after a crash: what is torn (cut), what is corruption (refused), and the
//! operator's way out (`tally log repair`).
//!
//! Only the last commit of the last segment can be torn: commits are written one at a time and
//! each is synced before the next starts. Recovery cuts a commit only when the bytes prove it
//! was never acknowledged, and never below a [`Witness`]: something durable outside the log (a
//! checkpoint journal) that has seen the log reach further. Everything else that fails its
//! checks is corruption: opening fails with one error naming the file, the byte position and
//! the witness, and nothing is cut until an operator runs the repair, which records what it cut.
//!
//! A commit is judged torn when (format version 2, with seals):
//! - the file ends inside it, or its frames are whole but no copy of its seal checks out, or
//!   its frames are damaged and no seal copy for it is found after them: the write did not
//!   reach its end, so its sync never returned;
//! - or a seal copy for it checks out but one of the disk sectors it spans (other than the
//!   seal's own) reads as zeros: that sector never reached the disk, so again the sync never
//!   returned. A written sector of a commit is never all zeros: each frame starts with its
//!   magic and records (donation envelopes, control records) hold no 512 zero bytes.
//!
//! Anything else — damaged bytes inside a commit whose seal vouches for it, or damage followed
//! by a later commit — is corruption. A segment of format version 1 (no seals) keeps the rule it
//! was written under: damage in its last commit, with no later commit after it, is torn.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::frame::FrameProblem;
use super::partition::{PartitionConfig, SegmentView, sync_directory};
use super::seal::{SEAL_BYTES, SEAL_COPY_BYTES, Seal};
use super::segment::{
    self, IndexEntry, SEGMENT_HEADER_BYTES, ScanOutcome, SealedIndex, SparseIndex,
    check_segment_header, has_seals, index_file_name, later_commit_follows,
    parse_segment_file_name, scan_segment, segment_file_name, segment_header,
};
use super::{LogError, Offset, PartitionId, Witness};
use crate::support::storage::simulated::SECTOR_BYTES;
use crate::support::storage::{OpenMode, Storage, StorageFile};

/// How to treat damage found while opening.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveryMode {
    /// Cut only what is provably torn and above every witness; refuse anything else.
    Strict,
    /// The operator's repair: cut the partition back to its last whole commit before any
    /// damage, whatever the witnesses say, and report what was cut.
    Repair,
}

/// What a repair cut from one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepairAction {
    pub partition: PartitionId,
    /// The damaged file and where in it the damage starts.
    pub path: PathBuf,
    pub position: u64,
    pub reason: String,
    /// The partition's end offset after the repair: records from here on were cut.
    pub kept_end_offset: Offset,
    /// Segment bytes cut (the damaged segment's tail and every later segment).
    pub bytes_cut: u64,
    /// Later segments removed whole.
    pub segments_removed: Vec<PathBuf>,
    /// The furthest a witness had seen the partition reach, if one had.
    pub witness: Option<Witness>,
}

/// Opens a partition directory's segments.
pub(super) struct Opening<'a> {
    pub storage: &'a dyn Storage,
    pub dir: &'a Path,
    pub partition: PartitionId,
    pub config: &'a PartitionConfig,
    pub witness: Option<&'a Witness>,
    pub mode: RecoveryMode,
}

/// Where opening the segments found damage: the segment's place, its base, and the base the
/// segments before it reached.
#[derive(Debug, Clone, Copy)]
struct SegmentCut {
    index: usize,
    base: Offset,
    expected_base: Offset,
}

impl Opening<'_> {
    /// Lists, checks and opens the segments, recovering the last one; in repair mode also
    /// returns what was cut.
    pub fn open(&self) -> Result<(Vec<SegmentView>, Option<RepairAction>), LogError> {
        let base_offsets = self.segment_bases()?;
        if base_offsets.is_empty() {
            let first = create_segment(self.storage, self.dir, 0, self.config)?;
            if self.mode == RecoveryMode::Strict {
                self.check_witness(first.end_offset, &first.path)?;
            }
            return Ok((vec![first], None));
        }
        let (mut segments, repair) = self.open_segments(&base_offsets)?;
        self.continue_in_todays_format(&mut segments)?;
        let repair = self.settle_witness(&segments, repair)?;
        Ok((segments, repair))
    }

    /// The base offsets of the partition's segment files, ascending.
    fn segment_bases(&self) -> Result<Vec<Offset>, LogError> {
        let names = self
            .storage
            .list_dir(self.dir)
            .map_err(|e| LogError::io(self.dir, e))?;
        let mut base_offsets: Vec<Offset> = names
            .iter()
            .filter_map(|name| parse_segment_file_name(name))
            .collect();
        base_offsets.sort_unstable();
        Ok(base_offsets)
    }

    /// Opens the segments in order, each continuing the one before; in repair mode, damage or
    /// a gap cuts the partition back there and ends the walk.
    fn open_segments(
        &self,
        base_offsets: &[Offset],
    ) -> Result<(Vec<SegmentView>, Option<RepairAction>), LogError> {
        let mut segments = Vec::with_capacity(base_offsets.len());
        let mut expected_base = 0;
        let mut repair = None;
        for (index, &base) in base_offsets.iter().enumerate() {
            let is_last = index + 1 == base_offsets.len();
            let opened = match check_continuity(
                &self.dir.join(segment_file_name(base)),
                base,
                expected_base,
            ) {
                Err(error) => Err(error),
                Ok(()) if is_last => self.open_last(base),
                Ok(()) => self.open_sealed(base).map(|view| (view, None)),
            };
            match opened {
                Ok((view, action)) => {
                    expected_base = view.end_offset;
                    repair = repair.or(action);
                    segments.push(view);
                }
                Err(error @ LogError::Corruption { .. }) if self.mode == RecoveryMode::Repair => {
                    let cut = SegmentCut {
                        index,
                        base,
                        expected_base,
                    };
                    repair = Some(self.repair_at(&mut segments, base_offsets, cut, error)?);
                    break;
                }
                Err(error) => return Err(error),
            }
        }
        Ok((segments, repair))
    }

    /// Cuts the partition back at damage found opening `cut.base`: a gap before that segment
    /// ends the partition where the previous one does, so this segment goes too; damage inside
    /// it is cut back when it is opened as the last one.
    fn repair_at(
        &self,
        segments: &mut Vec<SegmentView>,
        base_offsets: &[Offset],
        cut: SegmentCut,
        error: LogError,
    ) -> Result<RepairAction, LogError> {
        let SegmentCut {
            index,
            base,
            expected_base,
        } = cut;
        let gap = base != expected_base;
        let (cut_base, removed_from) = match (gap, segments.pop()) {
            (false, previous) => {
                segments.extend(previous);
                (base, index + 1)
            }
            (true, Some(previous)) => (previous.base_offset, index),
            (true, None) => {
                return Err(LogError::Corruption {
                    path: self.dir.join(segment_file_name(base)),
                    position: 0,
                    reason: format!(
                        "the partition's first segment (offset 0) is missing; it                                      cannot be repaired: {error}"
                    ),
                });
            }
        };
        let mut action = self.cut_at(cut_base, &base_offsets[removed_from..], error)?;
        let (view, tail) = self.open_last(cut_base)?;
        action.bytes_cut += tail.map_or(0, |tail| tail.bytes_cut);
        segments.push(view);
        Ok(action)
    }

    /// Appends in today's format from now on: an empty old-format last segment is started
    /// again, a non-empty one is closed with an index and a new segment follows it.
    fn continue_in_todays_format(&self, segments: &mut Vec<SegmentView>) -> Result<(), LogError> {
        let last = segments.last_mut().expect("at least one segment");
        if has_seals(last.format_version) {
            return Ok(());
        }
        if last.end_offset == last.base_offset {
            let base = last.base_offset;
            *last = create_segment(self.storage, self.dir, base, self.config)?;
            return Ok(());
        }
        let sealed = SealedIndex {
            index: last.index.clone(),
            end_offset: last.end_offset,
            end_position: last.end_position,
        };
        segment::write_index_file(
            self.storage,
            &self.dir.join(index_file_name(last.base_offset)),
            last.base_offset,
            &sealed,
        )?;
        let next = create_segment(self.storage, self.dir, last.end_offset, self.config)?;
        segments.push(next);
        Ok(())
    }

    /// The repair with the end it kept; in repair mode, a log ending before its witness is a
    /// repair too; in strict mode, it is refused.
    fn settle_witness(
        &self,
        segments: &[SegmentView],
        mut repair: Option<RepairAction>,
    ) -> Result<Option<RepairAction>, LogError> {
        let end_offset = segments.last().map_or(0, |segment| segment.end_offset);
        if let Some(action) = &mut repair {
            action.kept_end_offset = end_offset;
        } else if let Some(witness) = self.witness
            && witness.end_offset > end_offset
            && self.mode == RecoveryMode::Repair
        {
            repair = Some(RepairAction {
                partition: self.partition,
                path: self.dir.to_owned(),
                position: 0,
                reason: "the log ends before what its witness saw (segments missing)".into(),
                kept_end_offset: end_offset,
                bytes_cut: 0,
                segments_removed: Vec::new(),
                witness: Some(witness.clone()),
            });
        }
        if self.mode == RecoveryMode::Strict {
            let path = &segments.last().expect("at least one segment").path;
            self.check_witness(end_offset, path)?;
        }
        Ok(repair)
    }

    /// Refuses a partition that ends before what its witness saw.
    fn check_witness(&self, end_offset: Offset, path: &Path) -> Result<(), LogError> {
        match self.witness {
            Some(witness) if witness.end_offset > end_offset => Err(LogError::RecordsLost {
                partition: self.partition,
                offset: end_offset,
                reason: format!(
                    "the log ends at offset {end_offset} ({}) but {} has seen it reach \
                     {}; run `tally log repair` to accept the loss and record it",
                    path.display(),
                    witness.source,
                    witness.end_offset
                ),
            }),
            _ => Ok(()),
        }
    }

    fn open_sealed(&self, base: Offset) -> Result<SegmentView, LogError> {
        let path = self.dir.join(segment_file_name(base));
        let file = self
            .storage
            .open(&path, OpenMode::Read)
            .map_err(|e| LogError::io(&path, e))?;
        let format_version = check_segment_header(&*file, &path, base)?;
        let file_len = file.len().map_err(|e| LogError::io(&path, e))?;
        let index_path = self.dir.join(index_file_name(base));
        let interval = self.config.index_interval_bytes;
        // A repair reads every byte: damage in a sealed segment with a sound index would
        // otherwise be found only when a record is read.
        let index = match self.mode {
            RecoveryMode::Strict => {
                segment::read_index_file(self.storage, &index_path, base, interval)
            }
            RecoveryMode::Repair => None,
        };
        let sealed = match index {
            Some(sealed) => sealed,
            None => {
                tracing::info!(segment = %path.display(), "rebuilding missing or damaged segment index");
                let sealed = self.rebuild_sealed_index(&*file, &path, base, format_version)?;
                segment::write_index_file(self.storage, &index_path, base, &sealed)?;
                sealed
            }
        };
        if sealed.end_position != file_len {
            return Err(LogError::Corruption {
                path,
                position: sealed.end_position.min(file_len),
                reason: format!(
                    "sealed segment is {file_len} bytes but its commits end at byte {}",
                    sealed.end_position
                ),
            });
        }
        Ok(SegmentView {
            base_offset: base,
            path,
            file,
            format_version,
            index: sealed.index,
            end_position: sealed.end_position,
            end_offset: sealed.end_offset,
        })
    }

    /// A sealed segment must scan cleanly to its very end: it was never written after sealing.
    fn rebuild_sealed_index(
        &self,
        file: &dyn StorageFile,
        path: &Path,
        base: Offset,
        format_version: u32,
    ) -> Result<SealedIndex, LogError> {
        let outcome = scan_from_start(file, path, base, self.config, format_version)?;
        if let Some((position, problem)) = outcome.stopped_at {
            return Err(LogError::Corruption {
                path: path.to_owned(),
                position,
                reason: format!("sealed segment: {problem:?}"),
            });
        }
        if outcome.commit_end_position != outcome.end_position {
            return Err(LogError::Corruption {
                path: path.to_owned(),
                position: outcome.commit_end_position,
                reason: "sealed segment ends inside a commit".into(),
            });
        }
        Ok(SealedIndex {
            index: outcome.index,
            end_offset: outcome.end_offset,
            end_position: outcome.end_position,
        })
    }

    /// Opens the segment being written: scans it, judges what follows its last whole commit,
    /// and cuts a torn tail.
    fn open_last(&self, base: Offset) -> Result<(SegmentView, Option<RepairAction>), LogError> {
        let path = self.dir.join(segment_file_name(base));
        let file = self
            .storage
            .open(&path, OpenMode::ReadWrite)
            .map_err(|e| LogError::io(&path, e))?;
        let file_len = file.len().map_err(|e| LogError::io(&path, e))?;
        if self.header_never_synced(&*file, &path, base, file_len)? {
            // Created by a roll that crashed before its first commit synced (that sync would
            // have made the header durable with it): it holds no acknowledged record.
            tracing::warn!(segment = %path.display(), "re-creating a segment whose first commit never synced");
            drop(file);
            return Ok((
                create_segment(self.storage, self.dir, base, self.config)?,
                None,
            ));
        }
        let format_version = check_segment_header(&*file, &path, base)?;
        let mut outcome = scan_from_start(&*file, &path, base, self.config, format_version)?;
        for position in &outcome.damaged_seal_copies {
            tracing::warn!(segment = %path.display(), position, "one copy of a commit seal is damaged; the other vouches for the commit");
        }
        let verdict = judge_tail(&*file, &path, &outcome, file_len, format_version)?;
        let mut repair = None;
        match verdict {
            TailVerdict::Whole => {}
            TailVerdict::Torn { reason } => {
                if let Some(witness) = self.witness
                    && witness.end_offset > outcome.commit_end_offset
                    && self.mode == RecoveryMode::Strict
                {
                    return Err(self.corruption_below_witness(&path, &outcome, &reason, witness));
                }
                tracing::warn!(
                    segment = %path.display(),
                    position = outcome.commit_end_position,
                    bytes = file_len - outcome.commit_end_position,
                    %reason,
                    "cutting a torn last commit (never acknowledged)"
                );
                if self.mode == RecoveryMode::Repair
                    && let Some(witness) = self.witness
                    && witness.end_offset > outcome.commit_end_offset
                {
                    repair = Some(self.action(&path, &outcome, file_len, reason));
                }
                cut(&*file, &path, outcome.commit_end_position)?;
            }
            TailVerdict::Corrupt { position, reason } => {
                if self.mode == RecoveryMode::Strict {
                    return Err(match self.witness {
                        Some(witness) => {
                            self.corruption_below_witness(&path, &outcome, &reason, witness)
                        }
                        None => LogError::Corruption {
                            path,
                            position,
                            reason: format!(
                                "{reason}; run `tally log repair` to cut the partition back to \
                                 its last whole commit and record what is lost"
                            ),
                        },
                    });
                }
                let mut action = self.action(&path, &outcome, file_len, reason);
                action.position = position;
                repair = Some(action);
                cut(&*file, &path, outcome.commit_end_position)?;
            }
        }
        outcome.index.truncate(outcome.commit_end_position);
        let view = SegmentView {
            base_offset: base,
            path,
            file,
            format_version,
            index: outcome.index,
            end_position: outcome.commit_end_position,
            end_offset: outcome.commit_end_offset,
        };
        Ok((view, repair))
    }

    /// Whether a segment's header is missing or reads as zeros while nothing witnessed reaches
    /// into the segment: its first commit's sync, which carries the header, never returned.
    fn header_never_synced(
        &self,
        file: &dyn StorageFile,
        path: &Path,
        base: Offset,
        file_len: u64,
    ) -> Result<bool, LogError> {
        if check_segment_header(file, path, base).is_ok() {
            return Ok(false);
        }
        if self
            .witness
            .is_some_and(|witness| witness.end_offset > base)
        {
            return Ok(false);
        }
        if file_len <= SEGMENT_HEADER_BYTES {
            return Ok(true);
        }
        let mut header = [0u8; SEGMENT_HEADER_BYTES as usize];
        file.read_exact_at(&mut header, 0)
            .map_err(|e| LogError::io(path, e))?;
        Ok(header.iter().all(|&byte| byte == 0))
    }

    fn corruption_below_witness(
        &self,
        path: &Path,
        outcome: &ScanOutcome,
        reason: &str,
        witness: &Witness,
    ) -> LogError {
        LogError::Corruption {
            path: path.to_owned(),
            position: outcome.commit_end_position,
            reason: format!(
                "damaged commit after offset {} ({reason}), but {} has seen partition {} reach \
                 offset {}: acknowledged records are damaged; run `tally log repair` to cut the \
                 partition back and record what is lost",
                outcome.commit_end_offset, witness.source, self.partition, witness.end_offset
            ),
        }
    }

    fn action(
        &self,
        path: &Path,
        outcome: &ScanOutcome,
        file_len: u64,
        reason: String,
    ) -> RepairAction {
        RepairAction {
            partition: self.partition,
            path: path.to_owned(),
            position: outcome.commit_end_position,
            reason,
            kept_end_offset: outcome.commit_end_offset,
            bytes_cut: file_len - outcome.commit_end_position,
            segments_removed: Vec::new(),
            witness: self.witness.cloned(),
        }
    }

    /// Repair of damage in or before a segment that is not the last: removes `removed` (every
    /// later segment, newest first), so that the segment at `base` becomes the last and is cut
    /// back to its last whole commit when opened.
    fn cut_at(
        &self,
        base: Offset,
        removed: &[Offset],
        error: LogError,
    ) -> Result<RepairAction, LogError> {
        let path = self.dir.join(segment_file_name(base));
        let (position, reason) = match &error {
            LogError::Corruption {
                position, reason, ..
            } => (*position, reason.clone()),
            other => (0, other.to_string()),
        };
        let mut bytes_cut = 0;
        let mut segments_removed = Vec::new();
        for &later in removed.iter().rev() {
            let later_path = self.dir.join(segment_file_name(later));
            if let Ok(file) = self.storage.open(&later_path, OpenMode::Read) {
                bytes_cut += file.len().unwrap_or(0);
            }
            self.storage
                .remove_file(&later_path)
                .map_err(|e| LogError::io(&later_path, e))?;
            let _ = self
                .storage
                .remove_file(&self.dir.join(index_file_name(later)));
            segments_removed.push(later_path);
        }
        let _ = self
            .storage
            .remove_file(&self.dir.join(index_file_name(base)));
        sync_directory(self.storage, self.dir)?;
        Ok(RepairAction {
            partition: self.partition,
            path,
            position,
            reason,
            kept_end_offset: 0,
            bytes_cut,
            segments_removed,
            witness: self.witness.cloned(),
        })
    }
}

/// What the bytes after the last whole commit are.
#[derive(Debug)]
enum TailVerdict {
    /// Nothing follows the last whole commit.
    Whole,
    /// A commit whose write never completed: never acknowledged.
    Torn { reason: String },
    /// Damage to bytes that were written whole.
    Corrupt { position: u64, reason: String },
}

fn judge_tail(
    file: &dyn StorageFile,
    path: &Path,
    outcome: &ScanOutcome,
    file_len: u64,
    format_version: u32,
) -> Result<TailVerdict, LogError> {
    let commit_start = outcome.commit_end_position;
    let Some((position, problem)) = &outcome.stopped_at else {
        return Ok(if commit_start == file_len {
            TailVerdict::Whole
        } else {
            TailVerdict::Torn {
                reason: "the file ends inside a commit".into(),
            }
        });
    };
    if later_commit_follows(file, path, *position, outcome.end_offset)? {
        return Ok(TailVerdict::Corrupt {
            position: *position,
            reason: format!("damaged frame followed by later commits: {problem:?}"),
        });
    }
    if !has_seals(format_version) {
        return Ok(TailVerdict::Torn {
            reason: format!("unsealed format: the last commit is damaged ({problem:?})"),
        });
    }
    let mut tail = vec![0u8; (file_len - commit_start) as usize];
    file.read_exact_at(&mut tail, commit_start)
        .map_err(|e| LogError::io(path, e))?;
    // A seal of a later commit after the damage: that commit was synced, so the damaged one
    // was too, whatever the damage looks like.
    if let Some(later) = later_seal(&tail, commit_start, outcome.commit_end_offset) {
        return Ok(TailVerdict::Corrupt {
            position: *position,
            reason: format!(
                "damaged commit ({problem:?}) followed by a later commit sealed at byte {later}"
            ),
        });
    }
    if *problem == FrameProblem::Unsealed {
        return Ok(TailVerdict::Torn {
            reason: "the commit's frames are whole but its seal never reached the disk".into(),
        });
    }
    let Some((seal_position, seal)) = find_seal(&tail, commit_start, outcome.commit_end_offset)
    else {
        return Ok(TailVerdict::Torn {
            reason: format!(
                "damaged frame ({problem:?}) and no seal after it: the write never completed"
            ),
        });
    };
    let commit_end = commit_start + u64::from(seal.commit_bytes) + SEAL_BYTES as u64;
    if commit_end > file_len {
        return Ok(TailVerdict::Torn {
            reason: "the file ends inside the commit's seal".into(),
        });
    }
    if has_unwritten_sector(&tail, commit_start, seal_position) {
        return Ok(TailVerdict::Torn {
            reason: "a sector of the commit never reached the disk".into(),
        });
    }
    Ok(TailVerdict::Corrupt {
        position: *position,
        reason: format!(
            "the commit at byte {commit_start} was written whole (its seal at byte \
             {seal_position} checks out) but is damaged: {problem:?}"
        ),
    })
}

/// Every seal copy in `tail` that checks out, with its position in `tail`.
fn seal_copies(tail: &[u8]) -> impl Iterator<Item = (usize, Seal)> + '_ {
    (0..tail.len()).filter_map(|at| Seal::decode_copy(&tail[at..]).map(|seal| (at, seal)))
}

/// The position of a seal copy in `tail` (which starts at `commit_start` in the file) that
/// belongs to a commit after the one starting there (at `base_offset`).
fn later_seal(tail: &[u8], commit_start: u64, base_offset: Offset) -> Option<u64> {
    seal_copies(tail)
        .find(|(_, seal)| seal.base_offset > base_offset)
        .map(|(at, _)| commit_start + at as u64)
}

/// The position of a seal copy in `tail` (which starts at `commit_start` in the file) that
/// belongs to the commit starting there.
fn find_seal(tail: &[u8], commit_start: u64, base_offset: Offset) -> Option<(u64, Seal)> {
    seal_copies(tail)
        .find(|(at, seal)| {
            let frames_end = seal.commit_bytes as usize;
            seal.base_offset == base_offset
                && (*at == frames_end || *at == frames_end + SEAL_COPY_BYTES)
        })
        .map(|(at, seal)| (commit_start + at as u64, seal))
}

/// Whether a disk sector spanned by `[commit_start, seal_position)`, other than the sector
/// holding the seal copy, reads as zeros there: a sector that never reached the disk.
fn has_unwritten_sector(tail: &[u8], commit_start: u64, seal_position: u64) -> bool {
    let seal_sector = seal_position / SECTOR_BYTES;
    let mut sector = commit_start / SECTOR_BYTES;
    while sector < seal_sector {
        let from = (sector * SECTOR_BYTES).max(commit_start);
        let to = ((sector + 1) * SECTOR_BYTES).min(seal_position);
        let piece = &tail[(from - commit_start) as usize..(to - commit_start) as usize];
        if piece.iter().all(|&byte| byte == 0) {
            return true;
        }
        sector += 1;
    }
    false
}

fn scan_from_start(
    file: &dyn StorageFile,
    path: &Path,
    base: Offset,
    config: &PartitionConfig,
    format_version: u32,
) -> Result<ScanOutcome, LogError> {
    let start = IndexEntry {
        offset: base,
        position: SEGMENT_HEADER_BYTES,
    };
    let index = SparseIndex::new(config.index_interval_bytes);
    scan_segment(file, path, start, index, format_version)
}

/// Cuts a segment back to `position` and syncs the cut before anything is written there again:
/// the bytes past a segment's synced end must read as zeros (see the module doc).
fn cut(file: &dyn StorageFile, path: &Path, position: u64) -> Result<(), LogError> {
    file.set_len(position).map_err(|e| LogError::io(path, e))?;
    file.sync_data().map_err(|e| LogError::io(path, e))
}

fn check_continuity(path: &Path, base: Offset, expected_base: Offset) -> Result<(), LogError> {
    if base == expected_base {
        return Ok(());
    }
    Err(LogError::Corruption {
        path: path.to_owned(),
        position: 0,
        reason: format!(
            "segment starts at offset {base} but the previous one ends at {expected_base}"
        ),
    })
}

/// Creates an empty segment starting at `base_offset`: header written and synced, directory
/// synced. Commits are written to it without a sync of their own (the write-ahead file makes
/// them durable), so its header must be on disk before the first of them is acknowledged.
pub(super) fn create_segment(
    storage: &dyn Storage,
    dir: &Path,
    base_offset: Offset,
    config: &PartitionConfig,
) -> Result<SegmentView, LogError> {
    let path = dir.join(segment_file_name(base_offset));
    let file: Arc<dyn StorageFile> = storage
        .open(&path, OpenMode::CreateTruncate)
        .map_err(|e| LogError::io(&path, e))?;
    file.write_all_at(&segment_header(base_offset), 0)
        .and_then(|()| file.sync_data())
        .map_err(|e| LogError::io(&path, e))?;
    sync_directory(storage, dir)?;
    Ok(SegmentView {
        base_offset,
        path,
        file,
        format_version: segment::SEGMENT_FORMAT_VERSION,
        index: SparseIndex::new(config.index_interval_bytes),
        end_position: SEGMENT_HEADER_BYTES,
        end_offset: base_offset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zero_sector_inside_the_commit_is_unwritten_but_the_seal_sector_is_not_checked() {
        // Commit from byte 1000 to a seal at byte 2100: sectors 1 (1000..1024), 2, 3 are checked.
        let commit_start = 1000;
        let mut tail = vec![1u8; 1200];
        assert!(!has_unwritten_sector(&tail, commit_start, 2100));
        tail[(1536 - 1000)..(2048 - 1000)].fill(0);
        assert!(has_unwritten_sector(&tail, commit_start, 2100));
        let mut tail = vec![1u8; 1200];
        tail[(2048 - 1000)..(2100 - 1000)].fill(0);
        assert!(
            !has_unwritten_sector(&tail, commit_start, 2100),
            "the seal's own sector reached the disk with the seal"
        );
        let mut tail = vec![1u8; 1200];
        tail[0..24].fill(0);
        assert!(
            has_unwritten_sector(&tail, commit_start, 2100),
            "the leading piece"
        );
    }
}
