//! The consumer groups this binary knows. Adding one is a file implementing
//! [`Consumer`] and one entry here (see the README's "Adding a consumer").

use std::sync::Arc;

use crate::{
    analytics, cache,
    config::Settings,
    group::{Consumer, Group},
    notifications,
};

/// A group as `--group` names it, and how to build its effect from the settings.
pub struct Registration {
    /// The `--group` (`CONSUMER_GROUP`) value that runs only this group.
    pub flag: &'static str,
    pub group: Group,
    pub build: fn(&Settings) -> anyhow::Result<Arc<dyn Consumer>>,
}

/// Every group, in the order they start and `status` lists them.
pub static GROUPS: &[Registration] = &[
    Registration { flag: "cache", group: cache::GROUP, build: cache::build },
    Registration { flag: "analytics", group: analytics::GROUP, build: analytics::build },
    Registration { flag: "notifications", group: notifications::GROUP, build: notifications::build },
];

/// The groups `settings` runs (`--group`, or all of them), in registration order.
pub fn selected(settings: &Settings) -> Vec<&'static Registration> {
    GROUPS.iter().filter(|r| settings.group.as_deref().is_none_or(|flag| r.flag == flag)).collect()
}

/// The registration whose `--group` value or group name is `name`.
pub fn find(name: &str) -> Option<&'static Registration> {
    GROUPS.iter().find(|r| r.flag == name || r.group.name() == name)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::config::{Cli, GROUP_FLAGS};

    fn selected_by(args: &[&str]) -> Vec<&'static str> {
        let cli = Cli::try_parse_from(std::iter::once("rsvp-consumers").chain(args.iter().copied())).unwrap();
        selected(&cli.settings).into_iter().map(|r| r.group.name()).collect()
    }

    #[test]
    fn every_group_runs_by_default_and_one_when_asked() {
        assert_eq!(selected_by(&[]), vec!["cache-invalidation-group", "analytics-group", "notifications-group"]);
        assert_eq!(selected_by(&["--group", "analytics"]), vec!["analytics-group"]);
        assert_eq!(selected_by(&["run", "--group", "cache"]), vec!["cache-invalidation-group"]);
        assert_eq!(selected_by(&["--group", "notifications"]), vec!["notifications-group"]);
        let unknown = Cli::try_parse_from(["rsvp-consumers", "--group", "search"]).err().unwrap().to_string();
        assert!(unknown.contains("[possible values: cache, analytics, notifications]"), "{unknown}");
    }

    #[test]
    fn the_group_flags_are_the_registered_ones_in_order() {
        assert_eq!(GROUPS.iter().map(|r| r.flag).collect::<Vec<_>>(), GROUP_FLAGS);
    }

    #[test]
    fn groups_are_found_by_flag_and_by_name_and_names_are_unique() {
        for registration in GROUPS {
            assert_eq!(find(registration.flag).map(|r| r.group), Some(registration.group));
            assert_eq!(find(registration.group.name()).map(|r| r.group), Some(registration.group));
        }
        let names: std::collections::BTreeSet<_> = GROUPS.iter().map(|r| r.group).collect();
        assert_eq!(names.len(), GROUPS.len());
        assert!(find("nope").is_none());
    }
}
