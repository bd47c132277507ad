//! Processes as /proc shows them, for tests that check nothing is left running.

#![allow(dead_code, unreachable_pub)]

/// One process: its id, its parent's, and the rest of its stat line after the name.
pub struct Proc {
    pub pid: u32,
    pub ppid: u32,
    pub stat: String,
}

/// Every process visible now.
pub fn all() -> Vec<Proc> {
    let mut procs = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        // Gone between the listing and the read: not there.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some(end) = stat.rfind(')') else { continue };
        let rest = stat[end + 2..].to_owned();
        let Some(ppid) = rest.split(' ').nth(1).and_then(|p| p.parse().ok()) else {
            continue;
        };
        procs.push(Proc {
            pid,
            ppid,
            stat: rest,
        });
    }
    procs
}

/// The children of `parent`.
pub fn children_of(parent: u32) -> Vec<Proc> {
    all().into_iter().filter(|p| p.ppid == parent).collect()
}

/// Every process below `root`.
pub fn descendants(root: u32) -> Vec<u32> {
    let procs = all();
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(procs.iter().filter(|p| p.ppid == parent).map(|p| p.pid));
        i += 1;
    }
    found.remove(0);
    found
}

/// The process exists and is not a zombie.
pub fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| Some(stat[stat.rfind(')')? + 2..].starts_with(|c| c != 'Z')))
        .unwrap_or(false)
}
