// SPDX-License-Identifier: GPL-2.0

//! Merge domains: the trust boundary no merge crosses.
//!
//! Every page is advised in the merge domain of its process, named after its uid (the
//! default), its user namespace, a cgroup ancestor, the group the node agent assigned to its
//! cgroup (see [`crate::groups`]) or nothing (`global`), as `domain_policy` says. The index
//! keeps each domain's entries apart and the kernel's stable nodes carry their domain, so a
//! page is only ever compared with pages of its own domain.

use crate::{
    ffi::{
        mm::MmWithUser,
        upm::{mm_domain, DomainPolicy},
    },
    groups::{Groups, UNGROUPED},
    stats::TUNABLES,
};
use core::{fmt, sync::atomic::Ordering};
use kernel::prelude::*;

/// What merge domains are named after: one of the kernel's policies, or the groups root
/// assigns to cgroups (see [`crate::groups`]).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Policy {
    /// `upm_mm_domain()` names the domain.
    Kernel(DomainPolicy),
    /// The group of the deepest cgroup ancestor that has one, else the own cgroup.
    Group,
}

/// The domain policies by sysfs name: the kernel's in `enum upm_domain_policy` order, then
/// `group`. `domain_policy` holds an index into this table.
pub(crate) const POLICIES: [(&str, Policy); 5] = [
    ("global", Policy::Kernel(DomainPolicy::Global)),
    ("uid", Policy::Kernel(DomainPolicy::Uid)),
    ("userns", Policy::Kernel(DomainPolicy::Userns)),
    ("cgroup", Policy::Kernel(DomainPolicy::Cgroup)),
    ("group", Policy::Group),
];

/// The index in [`POLICIES`] of the default policy, `uid`.
pub(crate) const DEFAULT_POLICY: u32 = 1;

/// Bits of a domain's tag that hold its number; above them, the cgroup level and the policy,
/// so that domains of different policies (or levels) never compare equal.
const ID_BITS: u32 = 52;

/// Where the policy's index in [`POLICIES`] sits in a tag.
const POLICY_SHIFT: u32 = 60;

/// One merge domain, as the tag the index's keys and the kernel's stable nodes carry: the
/// policy's index in [`POLICIES`], a level (the cgroup level for `cgroup`; for `group`, 0 for
/// a group and [`UNGROUPED`] for an own cgroup) and the domain's number (cut to 52 bits: uids,
/// namespace inode numbers, cgroup ids of this boot and group numbers fit).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub(crate) struct Domain(u64);

impl Domain {
    /// The domain of `mm` under the current policy.
    ///
    /// # Errors
    ///
    /// `ESRCH` if the mm has no owner any more (it is exiting).
    pub(crate) fn of(mm: &MmWithUser, groups: &Groups) -> Result<Self> {
        let mut index = TUNABLES.domain_policy.load(Ordering::Relaxed);
        let policy = match POLICIES.get(index as usize) {
            Some((_, policy)) => *policy,
            None => {
                index = DEFAULT_POLICY;
                POLICIES[DEFAULT_POLICY as usize].1
            }
        };
        let (level, id) = match policy {
            Policy::Kernel(DomainPolicy::Cgroup) => {
                let level = TUNABLES
                    .domain_cgroup_level
                    .load(Ordering::Relaxed)
                    .min(255);
                (level, mm_domain(mm, DomainPolicy::Cgroup, level)?)
            }
            Policy::Kernel(kernel_policy) => (0, mm_domain(mm, kernel_policy, 0)?),
            Policy::Group => groups.domain_of(mm)?,
        };
        Ok(Self(
            (u64::from(index) << POLICY_SHIFT)
                | (u64::from(level) << ID_BITS)
                | (id & ((1 << ID_BITS) - 1)),
        ))
    }

    /// The domain a stable node was created in, from the tag it carries.
    pub(crate) fn from_tag(tag: u64) -> Self {
        Self(tag)
    }

    /// The tag the kernel's stable nodes carry.
    pub(crate) fn tag(self) -> u64 {
        self.0
    }
}

/// The name `domains` shows: `POLICY:NUMBER`, with the level for `cgroup`
/// (`cgroup:LEVEL:ID`), and `group:cgroup:ID` for a process in no group.
impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let policy = (self.0 >> POLICY_SHIFT) as usize;
        let level = (self.0 >> ID_BITS) & 0xff;
        let id = self.0 & ((1 << ID_BITS) - 1);
        let Some((name, policy)) = POLICIES.get(policy) else {
            return write!(f, "?:{id}");
        };
        match policy {
            Policy::Kernel(DomainPolicy::Cgroup) => write!(f, "{name}:{level}:{id}"),
            // A process in no group: its own cgroup is its domain.
            Policy::Group if level == u64::from(UNGROUPED) => write!(f, "{name}:cgroup:{id}"),
            _ => write!(f, "{name}:{id}"),
        }
    }
}
