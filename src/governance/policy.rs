//! The policy file: desired settings for sets of bound groups, validated at load, and the
//! resolution of its group selectors against the bound groups and discovered departments.
//!
//! ```toml
//! [[rule]]
//! groups = ["*"]          # all bound groups; or openConversationIds; "dept:<id>"; "dept:<id>/*"
//! dm = "locked"           # locked | open
//! mute_all = false
//! atall = "owner"         # owner | everyone
//! join_approval = true
//! searchable = false
//! history = true
//! manage = "owner"        # owner | everyone
//! ```
//!
//! The setting names are the switch commands' names (`/mute-all` → `mute_all`) and their
//! words come from the same command table, so the policy and the chat commands cannot drift.
//! Later rules override earlier ones, setting by setting.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

pub use super::setting::Setting;
use crate::domain::{ChatId, Department};

/// Largest policy file read, in bytes.
const MAX_POLICY_BYTES: u64 = 1024 * 1024;

/// Which groups a rule is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// `"*"`: every bound group.
    All,
    /// An openConversationId.
    Group(String),
    /// `"dept:<id>"`: that department's group; `"dept:<id>/*"`: it and every department below.
    Dept { id: i64, subtree: bool },
}

/// Why an entry of `groups` is not a [`Selector`]; names the entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error("`{0}` is not a department selector: expected dept:<id> or dept:<id>/* with a positive number")]
    Dept(String),
    #[error(
        "`{}` is not a group selector: expected \"*\", an openConversationId, dept:<id> or dept:<id>/*",
        .0.escape_debug()
    )]
    Group(String),
}

impl Selector {
    /// Reads one entry of `groups`; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<Self, SelectorError> {
        if text == "*" {
            return Ok(Selector::All);
        }
        if let Some(rest) = text.strip_prefix("dept:") {
            let (id, subtree) = match rest.strip_suffix("/*") {
                Some(id) => (id, true),
                None => (rest, false),
            };
            let digits = !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit());
            return match id.parse::<i64>() {
                Ok(id) if digits && id > 0 => Ok(Selector::Dept { id, subtree }),
                _ => Err(SelectorError::Dept(text.to_owned())),
            };
        }
        let ok =
            !text.is_empty() && text.len() <= 256 && text.chars().all(|c| c.is_ascii_graphic() && c != '*');
        if ok {
            Ok(Selector::Group(text.to_owned()))
        } else {
            Err(SelectorError::Group(text.to_owned()))
        }
    }
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Selector::All => f.write_str("*"),
            Selector::Group(cid) => f.write_str(cid),
            Selector::Dept { id, subtree: false } => write!(f, "dept:{id}"),
            Selector::Dept { id, subtree: true } => write!(f, "dept:{id}/*"),
        }
    }
}

/// One `[[rule]]`: which groups, and the settings they should have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub groups: Vec<Selector>,
    /// Setting → 0 or 1 (for `dm`, 1 = private chat forbidden).
    pub settings: BTreeMap<Setting, u8>,
}

/// A validated policy: its rules in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub rules: Vec<Rule>,
}

/// What is wrong with a policy's text. Rule numbers count from 1, in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("not valid TOML: {0}")]
    Toml(String),
    #[error("unknown key `{0}` (a policy is a list of [[rule]] tables)")]
    UnknownTop(String),
    #[error("`rule` must be a list of tables: write each rule as [[rule]]")]
    NotRules,
    #[error("no [[rule]]: a policy needs at least one")]
    NoRules,
    #[error("rule {rule}, `{field}`: {reason}")]
    Rule {
        rule: usize,
        field: String,
        reason: String,
    },
}

/// Why a policy file was refused.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read the policy file {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("policy file {path}: {problem}")]
    Invalid { path: String, problem: Problem },
}

impl Policy {
    /// Reads and validates the policy file at `path`.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        Self::load_text(path).map(|(policy, _)| policy)
    }

    /// [`Policy::load`], and the text it was read from.
    pub fn load_text(path: &Path) -> Result<(Self, String), PolicyError> {
        use std::io::Read as _;
        let shown = path.display().to_string();
        let read_error = |reason: String| PolicyError::Read {
            path: shown.clone(),
            reason,
        };
        let file = std::fs::File::open(path).map_err(|e| read_error(e.to_string()))?;
        let mut text = String::new();
        file.take(MAX_POLICY_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(|e| read_error(e.to_string()))?;
        if text.len() as u64 > MAX_POLICY_BYTES {
            return Err(read_error(format!("larger than {MAX_POLICY_BYTES} bytes")));
        }
        match Self::parse(&text) {
            Ok(policy) => Ok((policy, text)),
            Err(problem) => Err(PolicyError::Invalid { path: shown, problem }),
        }
    }

    /// Validates a policy's text.
    pub fn parse(text: &str) -> Result<Self, Problem> {
        let table: toml::Table = toml::from_str(text).map_err(|e| Problem::Toml(e.message().to_owned()))?;
        if let Some(key) = table.keys().find(|k| *k != "rule") {
            return Err(Problem::UnknownTop(key.clone()));
        }
        let rules = match table.get("rule") {
            None => return Err(Problem::NoRules),
            Some(toml::Value::Array(rules)) => rules,
            Some(_) => return Err(Problem::NotRules),
        };
        if rules.is_empty() {
            return Err(Problem::NoRules);
        }
        let rules = rules
            .iter()
            .enumerate()
            .map(|(i, rule)| match rule {
                toml::Value::Table(t) => Self::rule(i + 1, t),
                _ => Err(Problem::NotRules),
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { rules })
    }

    fn rule(rule: usize, table: &toml::Table) -> Result<Rule, Problem> {
        let problem = |field: &str, reason: String| Problem::Rule {
            rule,
            field: field.to_owned(),
            reason,
        };
        let mut groups = None;
        let mut settings = BTreeMap::new();
        for (key, value) in table {
            if key == "groups" {
                let list = match value {
                    toml::Value::Array(items) => items,
                    other => {
                        return Err(problem(
                            key,
                            format!("expected a list of selectors, found {}", other.type_str()),
                        ));
                    }
                };
                if list.is_empty() {
                    return Err(problem(
                        key,
                        "is empty: name \"*\", openConversationIds or dept:<id>".into(),
                    ));
                }
                let selectors = list
                    .iter()
                    .map(|item| match item {
                        toml::Value::String(s) => Selector::parse(s).map_err(|e| e.to_string()),
                        other => Err(format!("selectors are strings, found {}", other.type_str())),
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|reason| problem(key, reason))?;
                groups = Some(selectors);
                continue;
            }
            let Some(setting) = Setting::from_key(key) else {
                let known: Vec<&str> = std::iter::once("groups")
                    .chain(Setting::all().map(Setting::key))
                    .collect();
                return Err(problem(
                    key,
                    format!("unknown setting; known: {}", known.join(", ")),
                ));
            };
            let value = setting
                .parse(value)
                .map_err(|reason| problem(key, reason.to_string()))?;
            settings.insert(setting, value);
        }
        let Some(groups) = groups else {
            return Err(problem(
                "groups",
                "is missing: say which groups the rule is for".into(),
            ));
        };
        if settings.is_empty() {
            return Err(problem(
                "groups",
                "the rule sets nothing: add a setting such as dm or mute_all".into(),
            ));
        }
        Ok(Rule { groups, settings })
    }

    /// The groups the policy is about and what each should have, resolved against the bound
    /// groups (`bound`: openConversationId → chatid) and the discovered `departments`; and
    /// the selectors that named something that cannot be acted on. A department's group that
    /// is not bound is still reachable through the chatid discovery stored for it.
    pub fn resolve(&self, bound: &BTreeMap<String, ChatId>, departments: &[Department]) -> Resolution {
        let by_id: HashMap<i64, &Department> = departments.iter().map(|d| (d.dept_id, d)).collect();
        let mut children: HashMap<i64, Vec<i64>> = HashMap::new();
        for d in departments {
            if let Some(parent) = d.parent_id {
                children.entry(parent).or_default().push(d.dept_id);
            }
        }
        let mut wanted: BTreeMap<String, (ChatId, Wants)> = BTreeMap::new();
        let mut unresolved = Vec::new();
        for (index, rule) in self.rules.iter().enumerate() {
            let rule_no = index + 1;
            let mut matched: BTreeMap<String, ChatId> = BTreeMap::new();
            for selector in &rule.groups {
                let mut miss = |reason: String| {
                    unresolved.push(Unresolved {
                        rule: rule_no,
                        selector: selector.to_string(),
                        reason,
                    })
                };
                match selector {
                    Selector::All => matched.extend(bound.iter().map(|(c, id)| (c.clone(), id.clone()))),
                    Selector::Group(cid) => match bound.get(cid) {
                        Some(chatid) => {
                            matched.insert(cid.clone(), chatid.clone());
                        }
                        None => miss(format!(
                            "group {cid} is not bound: bind it with /bind, list it in [groups], or run dingops discover --apply"
                        )),
                    },
                    Selector::Dept { id, subtree } => {
                        let Some(root) = by_id.get(id) else {
                            miss(format!(
                                "department {id} is not among the discovered departments: run dingops discover --apply"
                            ));
                            continue;
                        };
                        let mut depts = vec![*root];
                        if *subtree {
                            let mut seen = BTreeSet::from([*id]);
                            let mut next = vec![*id];
                            while let Some(parent) = next.pop() {
                                for child in children.get(&parent).into_iter().flatten() {
                                    if seen.insert(*child)
                                        && let Some(d) = by_id.get(child)
                                    {
                                        depts.push(d);
                                        next.push(*child);
                                    }
                                }
                            }
                        }
                        for dept in depts {
                            match department_group(dept, bound) {
                                Ok(Some((cid, chatid))) => {
                                    matched.insert(cid, chatid);
                                }
                                // Departments without a group are normal below a subtree root.
                                Ok(None) if *subtree => {}
                                Ok(None) => {
                                    miss(format!("department {id} ({}) has no department group", dept.path))
                                }
                                Err(reason) => miss(reason),
                            }
                        }
                    }
                }
            }
            for (cid, chatid) in matched {
                let entry = wanted.entry(cid).or_insert_with(|| (chatid, BTreeMap::new()));
                entry
                    .1
                    .extend(rule.settings.iter().map(|(s, v)| (*s, (*v, rule_no))));
            }
        }
        Resolution {
            targets: wanted
                .into_iter()
                .map(|(cid, (chatid, wanted))| Target {
                    conversation_id: cid,
                    chat_id: chatid,
                    decided_by: wanted.iter().map(|(s, (_, rule))| (*s, *rule)).collect(),
                    wanted: wanted.into_iter().map(|(s, (v, _))| (s, v)).collect(),
                })
                .collect(),
            unresolved,
        }
    }
}

/// A department's group: its openConversationId and chatid (the binding's, else the one
/// discovery stored); `None` without a group.
fn department_group(
    dept: &Department,
    bound: &BTreeMap<String, ChatId>,
) -> Result<Option<(String, ChatId)>, String> {
    let Some(cid) = &dept.open_conversation_id else {
        return match &dept.chat_id {
            Some(chatid) => Err(format!(
                "department {} ({}) has group {chatid}, but its openConversationId is unknown: run dingops discover --apply",
                dept.dept_id, dept.path
            )),
            None => Ok(None),
        };
    };
    match bound.get(cid).or(dept.chat_id.as_ref()) {
        Some(chatid) => Ok(Some((cid.clone(), chatid.clone()))),
        None => Err(format!(
            "department {} ({}) group {cid} has no known chatid: run dingops discover --apply",
            dept.dept_id, dept.path
        )),
    }
}

/// Setting → (wanted value, number of the rule that decided it).
pub type Wants = BTreeMap<Setting, (u8, usize)>;

/// A group the policy is about and the settings it should have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub conversation_id: String,
    pub chat_id: ChatId,
    pub wanted: BTreeMap<Setting, u8>,
    /// For each wanted setting, the number (from 1) of the rule that decided it: the last
    /// matching rule that names it.
    pub decided_by: BTreeMap<Setting, usize>,
}

impl Policy {
    /// The rule numbered `rule` (from 1) and its selectors as the file writes them.
    pub fn selectors(&self, rule: usize) -> String {
        let Some(r) = rule.checked_sub(1).and_then(|i| self.rules.get(i)) else {
            return String::new();
        };
        let shown: Vec<String> = r.groups.iter().map(|g| format!("\"{g}\"")).collect();
        format!("groups = [{}]", shown.join(", "))
    }

    /// What the policy wants for one group (`bound`: its chatid when it is bound or listed in
    /// the configuration; a department group may be reached through discovery alone), setting
    /// by setting, with the rule that decided each. Resolved exactly as [`Policy::resolve`]
    /// resolves the group among all others.
    pub fn wants_for(
        &self,
        conversation_id: &str,
        bound: Option<&ChatId>,
        departments: &[Department],
    ) -> Wants {
        let bound: BTreeMap<String, ChatId> = bound
            .map(|c| (conversation_id.to_owned(), c.clone()))
            .into_iter()
            .collect();
        self.resolve(&bound, departments)
            .targets
            .into_iter()
            .find(|t| t.conversation_id == conversation_id)
            .map(|t| {
                t.wanted
                    .iter()
                    .map(|(s, v)| (*s, (*v, t.decided_by.get(s).copied().unwrap_or(0))))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A selector that named a group dingops cannot act on, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unresolved {
    /// The rule's number, from 1.
    pub rule: usize,
    pub selector: String,
    pub reason: String,
}

/// What a policy means for the groups at hand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    /// One per matched group, ordered by openConversationId.
    pub targets: Vec<Target>,
    pub unresolved: Vec<Unresolved>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::GroupSwitch;

    fn chat(s: &str) -> ChatId {
        ChatId::parse(s).unwrap()
    }

    fn problem(text: &str) -> String {
        Policy::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn every_setting_has_a_key_from_the_command_table_and_round_trips_its_words() {
        let keys: Vec<&str> = Setting::all().map(Setting::key).collect();
        assert_eq!(
            keys,
            [
                "dm",
                "mute_all",
                "atall",
                "join_approval",
                "searchable",
                "history",
                "manage"
            ]
        );
        for setting in Setting::all() {
            for value in [0u8, 1] {
                let word = setting.word(value);
                let toml_value = match word {
                    "true" | "false" => toml::Value::Boolean(word == "true"),
                    w => toml::Value::String(w.to_owned()),
                };
                assert_eq!(setting.parse(&toml_value), Ok(value), "{setting:?} {word}");
            }
        }
        assert_eq!(Setting::Switch(GroupSwitch::AtAll).word(1), "owner");
        assert_eq!(Setting::Switch(GroupSwitch::Mute).word(1), "true");
    }

    #[test]
    fn the_documented_example_is_valid_and_later_rules_override_per_setting() {
        let policy = Policy::parse(
            r#"
            [[rule]]
            groups = ["*"]
            dm = "locked"
            mute_all = false
            atall = "owner"
            join_approval = true
            searchable = false
            history = true
            manage = "owner"

            [[rule]]
            groups = ["cidB==", "dept:7/*"]
            atall = "everyone"
            join_approval = false
            "#,
        )
        .unwrap();
        assert_eq!(policy.rules.len(), 2);
        let bound = BTreeMap::from([("cidA==".into(), chat("chatA")), ("cidB==".into(), chat("chatB"))]);
        let res = policy.resolve(&bound, &[]);
        assert_eq!(res.targets.len(), 2);
        let b = &res.targets[1];
        assert_eq!(b.conversation_id, "cidB==");
        assert_eq!(b.wanted[&Setting::Switch(GroupSwitch::AtAll)], 0);
        assert_eq!(b.wanted[&Setting::Switch(GroupSwitch::JoinApproval)], 0);
        assert_eq!(b.wanted[&Setting::Switch(GroupSwitch::History)], 1);
        assert_eq!(b.wanted[&Setting::Dm], 1);
        assert_eq!(res.targets[0].wanted[&Setting::Switch(GroupSwitch::AtAll)], 1);
        assert_eq!(res.unresolved.len(), 1, "dept 7 was never discovered");
        assert_eq!(res.unresolved[0].rule, 2);
        assert_eq!(res.unresolved[0].selector, "dept:7/*");
    }

    #[test]
    fn validation_errors_name_the_rule_and_the_field() {
        let cases = [
            (
                "[[rule]]\ngroups=[\"*\"]\ndm=\"locked\"\n[[rule]]\ngroups=[\"*\"]\natall=\"boss\"\n",
                "rule 2, `atall`: expected \"owner\" or \"everyone\", found \"boss\"",
            ),
            (
                "[[rule]]\ngroups=[\"*\"]\nmute_all=\"yes\"\n",
                "rule 1, `mute_all`: expected true or false, found \"yes\"",
            ),
            (
                "[[rule]]\ngroups=[\"*\"]\nmute_al=true\n",
                "rule 1, `mute_al`: unknown setting",
            ),
            ("[[rule]]\ngroups=[]\ndm=\"open\"\n", "rule 1, `groups`: is empty"),
            ("[[rule]]\ndm=\"open\"\n", "rule 1, `groups`: is missing"),
            (
                "[[rule]]\ngroups=[\"dept:x\"]\ndm=\"open\"\n",
                "rule 1, `groups`: `dept:x` is not a department selector",
            ),
            (
                "[[rule]]\ngroups=[\"dept:0/*\"]\ndm=\"open\"\n",
                "rule 1, `groups`: `dept:0/*` is not a department selector",
            ),
            (
                "[[rule]]\ngroups=[\"cid x\"]\ndm=\"open\"\n",
                "rule 1, `groups`: `cid x` is not a group selector",
            ),
            (
                "[[rule]]\ngroups=[\"cid*\"]\ndm=\"open\"\n",
                "rule 1, `groups`: `cid*` is not a group selector",
            ),
            (
                "[[rule]]\ngroups=[\"*\"]\ndm=true\n",
                "rule 1, `dm`: expected \"locked\" or \"open\"",
            ),
            (
                "[[rule]]\ngroups=[\"*\"]\n",
                "rule 1, `groups`: the rule sets nothing",
            ),
            ("", "no [[rule]]"),
            ("rules = 1\n", "unknown key `rules`"),
            ("rule = 1\n", "[[rule]]"),
            ("[[rule]\n", "not valid TOML"),
        ];
        for (text, says) in cases {
            let err = problem(text);
            assert!(err.contains(says), "{text:?}: {err}");
        }
    }

    #[test]
    fn chinese_words_of_the_commands_are_accepted_too() {
        let p = Policy::parse("[[rule]]\ngroups=[\"*\"]\natall=\"群主\"\nmanage=\"所有人\"\n").unwrap();
        assert_eq!(p.rules[0].settings[&Setting::Switch(GroupSwitch::AtAll)], 1);
        assert_eq!(p.rules[0].settings[&Setting::Switch(GroupSwitch::Manage)], 0);
    }

    fn dept(id: i64, parent: Option<i64>, group: Option<(&str, &str)>) -> Department {
        Department {
            dept_id: id,
            parent_id: parent,
            name: format!("d{id}"),
            path: format!("path {id}"),
            chat_id: group.map(|(_, c)| chat(c)),
            open_conversation_id: group.map(|(cid, _)| cid.to_owned()),
        }
    }

    #[test]
    fn one_groups_wants_name_the_deciding_rule_and_agree_with_resolving_every_group() {
        let policy = Policy::parse(
            r#"
            [[rule]]
            groups = ["*"]
            mute_all = false
            atall = "owner"

            [[rule]]
            groups = ["cidB==", "dept:2/*"]
            atall = "everyone"
            "#,
        )
        .unwrap();
        let depts = [
            dept(1, None, None),
            dept(2, Some(1), None),
            dept(3, Some(2), Some(("cid3==", "chat3"))),
        ];
        let bound = BTreeMap::from([("cidA==".into(), chat("chatA")), ("cidB==".into(), chat("chatB"))]);
        let all = policy.resolve(&bound, &depts);
        for target in &all.targets {
            let one = policy.wants_for(
                &target.conversation_id,
                bound.get(&target.conversation_id),
                &depts,
            );
            let wanted: BTreeMap<Setting, u8> = one.iter().map(|(s, (v, _))| (*s, *v)).collect();
            assert_eq!(wanted, target.wanted, "{}", target.conversation_id);
        }
        let atall = Setting::Switch(GroupSwitch::AtAll);
        let b = policy.wants_for("cidB==", Some(&chat("chatB")), &depts);
        assert_eq!(b[&atall], (0, 2));
        assert_eq!(b[&Setting::Switch(GroupSwitch::Mute)], (0, 1));
        assert_eq!(
            policy.wants_for("cidA==", Some(&chat("chatA")), &depts)[&atall],
            (1, 1)
        );
        // A department group reached through discovery alone: not among "*".
        assert_eq!(
            policy.wants_for("cid3==", None, &depts).get(&atall),
            Some(&(0, 2))
        );
        assert!(
            !policy
                .wants_for("cid3==", None, &depts)
                .contains_key(&Setting::Switch(GroupSwitch::Mute))
        );
        assert!(policy.wants_for("cidZ==", None, &depts).is_empty());
        assert_eq!(policy.selectors(2), r#"groups = ["cidB==", "dept:2/*"]"#);
        assert_eq!(policy.selectors(3), "");
    }

    #[test]
    fn department_selectors_take_the_group_or_the_whole_subtree() {
        // 1 ─ 2 (group) ─ 4 (no group) ─ 5 (group)
        //   └ 3 (group)
        let depts = [
            dept(1, None, None),
            dept(2, Some(1), Some(("cid2==", "chat2"))),
            dept(3, Some(1), Some(("cid3==", "chat3"))),
            dept(4, Some(2), None),
            dept(5, Some(4), Some(("cid5==", "chat5"))),
        ];
        let bound = BTreeMap::from([("cid2==".into(), chat("chat2bound"))]);
        let cids = |text: &str| {
            let p = Policy::parse(&format!("[[rule]]\ngroups=[{text}]\ndm=\"locked\"\n")).unwrap();
            let r = p.resolve(&bound, &depts);
            (
                r.targets
                    .iter()
                    .map(|t| format!("{}={}", t.conversation_id, t.chat_id))
                    .collect::<Vec<_>>(),
                r.unresolved.iter().map(|u| u.reason.clone()).collect::<Vec<_>>(),
            )
        };
        assert_eq!(cids("\"dept:2\""), (vec!["cid2===chat2bound".to_owned()], vec![]));
        assert_eq!(
            cids("\"dept:2/*\""),
            (vec!["cid2===chat2bound".into(), "cid5===chat5".into()], vec![])
        );
        assert_eq!(
            cids("\"dept:1/*\"").0,
            ["cid2===chat2bound", "cid3===chat3", "cid5===chat5"]
        );
        let (none, why) = cids("\"dept:4\"");
        assert!(none.is_empty());
        assert!(why[0].contains("has no department group"), "{why:?}");
        let (none, why) = cids("\"dept:9/*\"");
        assert!(none.is_empty());
        assert!(why[0].contains("not among the discovered departments"), "{why:?}");
        let (none, why) = cids("\"cidUnbound==\"");
        assert!(none.is_empty());
        assert!(why[0].contains("is not bound"), "{why:?}");
    }
}
