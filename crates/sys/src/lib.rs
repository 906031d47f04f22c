//! Linux interfaces the supervisor needs: `/proc` ([`procfs`]) and cgroups ([`cgroup`]).

pub mod cgroup;
pub mod procfs;
