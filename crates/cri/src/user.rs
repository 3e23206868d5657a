//! Who a container's process runs as: the CRI security context over the image's `User`, with
//! names and supplementary groups resolved from the image's `/etc/passwd` and `/etc/group`
//! (as containerd's `WithUser`/`WithAdditionalGIDs`).

use tonic::Status;

/// The process's user.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct User {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    /// Supplementary groups (from /etc/group, then the security context's).
    pub(crate) groups: Vec<u32>,
    /// The user's name in /etc/passwd, if it has one.
    pub(crate) name: Option<String>,
}

/// One `/etc/passwd` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PasswdEntry {
    pub(crate) name: String,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

pub(crate) fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 4 {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
            })
        })
        .collect()
}

/// `/etc/group` as (name, gid, members).
pub(crate) fn parse_group(text: &str) -> Vec<(String, u32, Vec<String>)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 3 {
                return None;
            }
            let members = f
                .get(3)
                .map(|m| {
                    m.split(',')
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            Some((f[0].to_string(), f[2].parse().ok()?, members))
        })
        .collect()
}

/// What the user is given as: the CRI fields, else the image's `User` (`name`, `uid`,
/// `name:group`, `uid:gid`).
#[derive(Debug, Clone, Default)]
pub(crate) struct UserSpec {
    pub(crate) uid: Option<u32>,
    pub(crate) username: Option<String>,
    pub(crate) gid: Option<u32>,
    pub(crate) groupname: Option<String>,
}

impl UserSpec {
    pub(crate) fn from_image(user: &str) -> UserSpec {
        let mut s = UserSpec::default();
        if user.is_empty() {
            return s;
        }
        let (u, g) = match user.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (user, None),
        };
        match u.parse::<u32>() {
            Ok(n) => s.uid = Some(n),
            Err(_) if !u.is_empty() => s.username = Some(u.to_string()),
            Err(_) => {}
        }
        if let Some(g) = g.filter(|g| !g.is_empty()) {
            match g.parse::<u32>() {
                Ok(n) => s.gid = Some(n),
                Err(_) => s.groupname = Some(g.to_string()),
            }
        }
        s
    }

    /// Resolves against the image's files (absent files are empty). `extra` are the security
    /// context's supplemental groups.
    pub(crate) fn resolve(
        &self,
        passwd: Option<&str>,
        group: Option<&str>,
        extra: &[i64],
    ) -> Result<User, Status> {
        let users = passwd.map(parse_passwd).unwrap_or_default();
        let groups = group.map(parse_group).unwrap_or_default();
        let (uid, mut gid, name) = match (&self.uid, &self.username) {
            (Some(uid), _) => {
                let e = users.iter().find(|e| e.uid == *uid);
                (
                    *uid,
                    e.map(|e| e.gid).unwrap_or(0),
                    e.map(|e| e.name.clone()),
                )
            }
            (None, Some(n)) => {
                let e = users.iter().find(|e| &e.name == n).ok_or_else(|| {
                    Status::invalid_argument(format!(
                        "user {n:?}: no such user in the image's /etc/passwd"
                    ))
                })?;
                (e.uid, e.gid, Some(e.name.clone()))
            }
            (None, None) => {
                let e = users.iter().find(|e| e.uid == 0);
                (0, e.map(|e| e.gid).unwrap_or(0), e.map(|e| e.name.clone()))
            }
        };
        if let Some(g) = self.gid {
            gid = g;
        } else if let Some(gn) = &self.groupname {
            gid = groups
                .iter()
                .find(|(n, _, _)| n == gn)
                .map(|(_, g, _)| *g)
                .ok_or_else(|| {
                    Status::invalid_argument(format!(
                        "group {gn:?}: no such group in the image's /etc/group"
                    ))
                })?;
        }
        let mut out: Vec<u32> = Vec::new();
        if let Some(n) = &name {
            for (_, g, members) in &groups {
                if members.iter().any(|m| m == n) && !out.contains(g) {
                    out.push(*g);
                }
            }
        }
        for g in extra {
            let g = u32::try_from(*g).map_err(|_| {
                Status::invalid_argument(format!(
                    "linux.security_context.supplemental_groups: {g} is not a valid gid"
                ))
            })?;
            if !out.contains(&g) {
                out.push(g);
            }
        }
        Ok(User {
            uid,
            gid,
            groups: out,
            name,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nwww-data:x:33:33:www:/var/www:/bin/false\nu:x:1000:1000::/:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nwww-data:x:33:\nextra:x:50000:u,other\nfoo:x:1004:\n";

    #[test]
    fn image_user_forms() {
        let r = |s: &str| UserSpec::from_image(s).resolve(Some(PASSWD), Some(GROUP), &[]);
        assert_eq!(r("").unwrap().uid, 0);
        let w = r("www-data").unwrap();
        assert_eq!((w.uid, w.gid), (33, 33));
        let w = r("www-data:1004").unwrap();
        assert_eq!((w.uid, w.gid), (33, 1004));
        let n = r("1002").unwrap();
        assert_eq!((n.uid, n.gid, n.name), (1002, 0, None));
        let n = r("1003:1004").unwrap();
        assert_eq!((n.uid, n.gid), (1003, 1004));
        let u = r("1000").unwrap();
        assert_eq!((u.uid, u.gid, u.groups.clone()), (1000, 1000, vec![50000]));
        let g = r("1000:foo").unwrap();
        assert_eq!(g.gid, 1004);
        assert_eq!(
            r("nobody").unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }

    #[test]
    fn supplemental_groups_are_added_once() {
        let u = UserSpec {
            uid: Some(1000),
            ..Default::default()
        }
        .resolve(Some(PASSWD), Some(GROUP), &[50000, 7])
        .unwrap();
        assert_eq!(u.groups, vec![50000, 7]);
        assert!(UserSpec::default().resolve(None, None, &[-1]).is_err());
    }
}
