//! Content → units: which of a platform's units a programme shows (P-iptv
//! [0048] and claims 11 and 22, the "first access request").
//!
//! An IPTV operator tags a content id (a programme, a channel) with the
//! units of one platform that go with it: a list of units, all of the
//! platform's units, or none (the content is known and shows no unit). A
//! terminal's first access request names the platform and the content and
//! gets back the units to show, each with what a viewer needs to choose one:
//! its name, QoS class and response-time target, its access policy, and
//! whether it admits logins at the current cluster time. The second access
//! request is a login (`AccountLogin`, `LeaseAndLogin`).

use serde::{Deserialize, Serialize};

use super::super::StateError;
use super::super::limits::{MAX_NAME_BYTES, MAX_UNITS, check_len};
use super::super::quotas::{Quotas, over};
use super::registered::unit_refusal;
use super::{AccountPools, Unit};

/// The units a content shows.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum ContentUnits {
    /// These units of the platform, in this order (1..=64, no repeats).
    List(Vec<u64>),
    /// Every unit of the platform, in the platform's order.
    All,
    /// No unit.
    None,
}

/// Tags a content id of a platform with its units (replaces an earlier tag).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SetContentUnits {
    /// An existing platform.
    pub platform_id: u64,
    /// 1..=128 bytes.
    pub content_id: String,
    /// What the content shows.
    pub units: ContentUnits,
}

/// Removes a content's tag.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RemoveContent {
    /// Its platform.
    pub platform_id: u64,
    /// Its id.
    pub content_id: String,
}

/// A unit as a first access request shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitShown {
    /// The unit.
    pub unit: Unit,
    /// Whether it admits logins at the cluster time of the answer (in its
    /// service period and not closed).
    pub available: bool,
}

/// The answer to a first access request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContentView {
    /// The platform.
    pub platform_id: u64,
    /// The content.
    pub content_id: String,
    /// The tag as the operator set it.
    pub units: ContentUnits,
    /// The units to show (empty for [`ContentUnits::None`]).
    pub shown: Vec<UnitShown>,
}

impl SetContentUnits {
    /// Field limits: a list has 1..=64 distinct unit ids.
    pub fn validate(&self) -> Result<(), StateError> {
        check_len("content_id", &self.content_id, 1, MAX_NAME_BYTES)?;
        if let ContentUnits::List(ids) = &self.units {
            if ids.is_empty() || ids.len() > MAX_UNITS {
                return Err(StateError::invalid(
                    "unit_ids",
                    format!(
                        "a LIST names 1..={MAX_UNITS} units, got {} (use ALL or NONE otherwise)",
                        ids.len()
                    ),
                ));
            }
            let mut seen = std::collections::BTreeSet::new();
            for id in ids {
                if !seen.insert(id) {
                    return Err(StateError::invalid(
                        "unit_ids",
                        format!("unit {id} is named twice"),
                    ));
                }
            }
        }
        Ok(())
    }
}

impl RemoveContent {
    /// Field limits.
    pub fn validate(&self) -> Result<(), StateError> {
        check_len("content_id", &self.content_id, 1, MAX_NAME_BYTES)
    }
}

impl AccountPools {
    /// Whether a new tag fits `contents` (a replaced tag adds nothing).
    pub(crate) fn admit_content(
        &self,
        q: &Quotas,
        cmd: &SetContentUnits,
    ) -> Result<(), StateError> {
        let exists = self
            .contents
            .contains_key(&(cmd.platform_id, cmd.content_id.clone()));
        if !exists && self.contents.len() as u64 >= q.contents {
            return Err(over(
                "contents",
                q.contents,
                format!("{} contents are tagged", self.contents.len()),
            ));
        }
        Ok(())
    }

    pub(crate) fn set_content(&mut self, cmd: &SetContentUnits) -> Result<(), StateError> {
        let platform = self
            .platforms
            .get(&cmd.platform_id)
            .ok_or_else(|| StateError::not_found(format!("platform {}", cmd.platform_id)))?;
        if let ContentUnits::List(ids) = &cmd.units
            && let Some(id) = ids
                .iter()
                .find(|id| !platform.units.iter().any(|u| u.unit_id == **id))
        {
            return Err(StateError::invalid(
                "unit_ids",
                format!("unit {id} is not a unit of platform {}", cmd.platform_id),
            ));
        }
        self.contents
            .insert((cmd.platform_id, cmd.content_id.clone()), cmd.units.clone());
        Ok(())
    }

    pub(crate) fn remove_content(&mut self, cmd: &RemoveContent) -> Result<(), StateError> {
        self.contents
            .remove(&(cmd.platform_id, cmd.content_id.clone()))
            .map(|_| ())
            .ok_or_else(|| {
                StateError::not_found(format!(
                    "content {:?} of platform {}",
                    cmd.content_id, cmd.platform_id
                ))
            })
    }

    /// The first access request: the units `content_id` shows, judged at
    /// cluster time `now_ms`.
    pub(crate) fn first_access(
        &self,
        platform_id: u64,
        content_id: &str,
        now_ms: u64,
    ) -> Result<ContentView, StateError> {
        let platform = self
            .platforms
            .get(&platform_id)
            .ok_or_else(|| StateError::not_found(format!("platform {platform_id}")))?;
        let units = self
            .contents
            .get(&(platform_id, content_id.to_owned()))
            .ok_or_else(|| {
                StateError::not_found(format!("content {content_id:?} of platform {platform_id}"))
            })?;
        let show = |u: &Unit| UnitShown {
            unit: u.clone(),
            available: unit_refusal(u, now_ms).is_none(),
        };
        let shown = match units {
            ContentUnits::All => platform.units.iter().map(show).collect(),
            ContentUnits::None => Vec::new(),
            ContentUnits::List(ids) => ids
                .iter()
                .filter_map(|id| platform.units.iter().find(|u| u.unit_id == *id))
                .map(show)
                .collect(),
        };
        Ok(ContentView {
            platform_id,
            content_id: content_id.to_owned(),
            units: units.clone(),
            shown,
        })
    }

    /// Tagged contents in the cluster.
    pub(crate) fn content_count(&self) -> usize {
        self.contents.len()
    }

    /// Drops the tags of a platform that is gone.
    pub(super) fn forget_contents_of(&mut self, platform_id: u64) {
        self.contents.retain(|(p, _), _| *p != platform_id);
    }
}
