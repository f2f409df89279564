// SPDX-License-Identifier: GPL-2.0

//! Merge groups, for `domain_policy=group`: the node agent names which cgroups may share.
//!
//! On a Kubernetes node the instances of one function are separate pods, each in a cgroup of
//! its own, at depth 2 or 3 below the kubelet's root depending on its QoS class; nothing in
//! the cgroup tree tells which pods run one function, or which namespace (tenant) they belong
//! to. The node agent knows: before a pod's processes advise anything, it writes
//! `CGROUP_ID GROUP` to `domain_groups` for the pod's cgroup, the group being a number it
//! derives from the namespace and the function. A process is then in the group of its
//! deepest cgroup ancestor (itself included) that has one, at any depth; a process in no
//! group has its own cgroup as its domain, so nothing it advises merges with another
//! container's. Only root writes the table, and it holds at most [`MAX_GROUPS`] cgroups.

use crate::ffi::{
    mm::MmWithUser,
    sysfs::SysfsBuf,
    upm::{mm_domain, DomainPolicy},
};
use core::fmt::Write;
use kernel::{new_mutex, prelude::*, rbtree::RBTree, sync::Mutex};

/// Most cgroups with a group: bounds the table (a few MiB) whatever root writes.
pub(crate) const MAX_GROUPS: usize = 65536;

/// The largest group number: a domain tag keeps 52 bits of it.
pub(crate) const MAX_GROUP: u64 = (1 << 52) - 1;

/// The cgroup level field of the domain tag of a process in no group, whose own cgroup names
/// its domain: no group's tag (level field 0) equals it.
pub(crate) const UNGROUPED: u32 = 255;

/// The deepest cgroup level looked at: a process below it is in its ancestor's place there.
const MAX_LEVEL: usize = 32;

/// Cgroup id to group, and how many there are.
struct Table {
    groups: RBTree<u64, u64>,
    len: usize,
}

/// The groups root assigned, and their lock.
///
/// Lock order: taken last, inside the index lock (a pairing checks its candidate's domain).
#[pin_data]
pub(crate) struct Groups {
    #[pin]
    table: Mutex<Table>,
}

impl Groups {
    /// No cgroup in a group.
    pub(crate) fn new() -> impl PinInit<Self> {
        pin_init!(Self {
            table <- new_mutex!(
                Table {
                    groups: RBTree::new(),
                    len: 0,
                },
                "upm_groups"
            ),
        })
    }

    /// Puts the cgroup with id `cgroup`, and every cgroup below it that has no group of its
    /// own, in `group`; group 0 takes it out of its group.
    ///
    /// # Errors
    ///
    /// `EINVAL` for cgroup id 0 or a group above [`MAX_GROUP`], `ENOSPC` when [`MAX_GROUPS`]
    /// cgroups have a group, `ENOMEM`.
    pub(crate) fn assign(&self, cgroup: u64, group: u64) -> Result {
        if cgroup == 0 || group > MAX_GROUP {
            return Err(EINVAL);
        }
        let mut table = self.table.lock();
        if group == 0 {
            if table.groups.remove(&cgroup).is_some() {
                table.len -= 1;
            }
            return Ok(());
        }
        if let Some(old) = table.groups.get_mut(&cgroup) {
            *old = group;
            return Ok(());
        }
        if table.len >= MAX_GROUPS {
            return Err(ENOSPC);
        }
        table
            .groups
            .try_create_and_insert(cgroup, group, GFP_KERNEL)?;
        table.len += 1;
        Ok(())
    }

    /// The domain of `mm`'s owner as (cgroup level field, number): `(0, group)` for the group
    /// of its deepest cgroup ancestor that has one, else `(UNGROUPED, its own cgroup's id)`.
    ///
    /// # Errors
    ///
    /// `ESRCH` if the mm has no owner any more.
    pub(crate) fn domain_of(&self, mm: &MmWithUser) -> Result<(u32, u64)> {
        // Ancestor ids from the root down: below the owner's own level the kernel answers
        // with the owner's own cgroup again, and two levels never share an id.
        let mut chain = [0u64; MAX_LEVEL + 1];
        let mut depth = 0;
        for level in 0..=MAX_LEVEL {
            let id = mm_domain(mm, DomainPolicy::Cgroup, level as u32)?;
            if level > 0 && id == chain[level - 1] {
                break;
            }
            chain[level] = id;
            depth = level + 1;
        }
        let table = self.table.lock();
        for id in chain[..depth].iter().rev() {
            if let Some(group) = table.groups.get(id) {
                return Ok((0, *group));
            }
        }
        Ok((UNGROUPED, chain[depth - 1]))
    }

    /// `domain_groups`: a line `CGROUP_ID GROUP` per cgroup in a group, in id order; what does
    /// not fit the page is left out.
    pub(crate) fn show(&self, out: &mut SysfsBuf<'_>) -> Result {
        let table = self.table.lock();
        for (cgroup, group) in table.groups.iter() {
            if out.remaining() < 48 {
                break;
            }
            writeln!(out, "{cgroup} {group}").map_err(|_| EINVAL)?;
        }
        Ok(())
    }

    /// Writes to `domain_groups`: `CGROUP_ID GROUP`, see [`Self::assign`].
    pub(crate) fn store(&self, input: &str) -> Result {
        let mut fields = input.split_ascii_whitespace();
        let (Some(cgroup), Some(group), None) = (fields.next(), fields.next(), fields.next())
        else {
            return Err(EINVAL);
        };
        let parse = |f: &str| f.parse::<u64>().map_err(|_| EINVAL);
        self.assign(parse(cgroup)?, parse(group)?)
    }
}
