//! Kubernetes label selectors (`metav1.LabelSelector`) with exactly the
//! upstream semantics.
//!
//! - All of `matchLabels` and all of `matchExpressions` must hold (AND).
//! - The empty selector `{}` matches everything; an *absent* selector is a
//!   different thing and is handled by the caller (in a NetworkPolicy peer,
//!   an absent `namespaceSelector` means "the policy's namespace").
//! - `In`: the key is present and its value is one of `values`.
//!   `NotIn`: the key is absent, or its value is none of `values`.
//!   `Exists` / `DoesNotExist`: the key is present / absent.
//! - `In`/`NotIn` need at least one value; `Exists`/`DoesNotExist` take none
//!   (the API server refuses both mistakes, so do we).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{
    model::{check_label_key, check_label_value, FieldError},
    strict::{nullable, strict},
};

/// Labels of a pod or namespace.
pub type Labels = BTreeMap<String, String>;

/// A label selector.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(remote = "Self", rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    /// Each key must have exactly this value.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub match_labels: Labels,
    /// Each requirement must hold.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub match_expressions: Vec<Requirement>,
}
strict!(LabelSelector, "a label selector", []);

/// One `matchExpressions` entry.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(remote = "Self", deny_unknown_fields)]
pub struct Requirement {
    /// The label key.
    pub key: String,
    /// How the key's value is compared with `values`.
    pub operator: Operator,
    /// Values for `In`/`NotIn`; empty for `Exists`/`DoesNotExist`.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub values: Vec<String>,
}
strict!(Requirement, "a label selector requirement", []);

/// A `matchExpressions` operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Operator {
    /// The key is present and its value is in the set.
    In,
    /// The key is absent or its value is not in the set.
    NotIn,
    /// The key is present.
    Exists,
    /// The key is absent.
    DoesNotExist,
}

impl LabelSelector {
    /// The selector `{}`, which matches everything.
    pub fn everything() -> Self {
        Self::default()
    }

    /// A `matchLabels`-only selector.
    pub fn labels<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self {
            match_labels: pairs
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            match_expressions: Vec::new(),
        }
    }

    /// Whether this is `{}` (matches everything).
    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    /// Whether `labels` satisfy the selector.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }

    /// Checks the selector as the API server would; `field` is its path
    /// (for the message).
    pub fn validate(&self, field: &str) -> Result<(), FieldError> {
        for (k, v) in &self.match_labels {
            check_label_key(k).map_err(|m| FieldError::new(format!("{field}.matchLabels"), m))?;
            check_label_value(v)
                .map_err(|m| FieldError::new(format!("{field}.matchLabels.{k}"), m))?;
        }
        for (i, r) in self.match_expressions.iter().enumerate() {
            let here = format!("{field}.matchExpressions[{i}]");
            check_label_key(&r.key).map_err(|m| FieldError::new(format!("{here}.key"), m))?;
            match (r.operator, r.values.is_empty()) {
                (Operator::In | Operator::NotIn, true) => {
                    return Err(FieldError::new(
                        format!("{here}.values"),
                        format!("operator {:?} needs at least one value", r.operator),
                    ))
                }
                (Operator::Exists | Operator::DoesNotExist, false) => {
                    return Err(FieldError::new(
                        format!("{here}.values"),
                        format!("operator {:?} takes no values", r.operator),
                    ))
                }
                _ => {}
            }
            for (j, v) in r.values.iter().enumerate() {
                check_label_value(v)
                    .map_err(|m| FieldError::new(format!("{here}.values[{j}]"), m))?;
            }
        }
        Ok(())
    }
}

impl Requirement {
    /// Whether `labels` satisfy this requirement.
    pub fn matches(&self, labels: &Labels) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            Operator::In => value.is_some_and(|v| self.values.contains(v)),
            Operator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

impl std::fmt::Display for LabelSelector {
    /// `kubectl`'s selector syntax: `a=b,c in (d,e),!f`; `{}` prints as
    /// `<all>`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_empty() {
            return f.write_str("<all>");
        }
        // Straight into the formatter: the compiler describes every rule
        // of every selecting policy on each sync.
        let mut sep = "";
        for (k, v) in &self.match_labels {
            write!(f, "{sep}{k}={v}")?;
            sep = ",";
        }
        for r in &self.match_expressions {
            f.write_str(sep)?;
            sep = ",";
            match r.operator {
                Operator::In | Operator::NotIn => {
                    let op = if r.operator == Operator::In {
                        "in"
                    } else {
                        "notin"
                    };
                    write!(f, "{} {op} (", r.key)?;
                    for (i, v) in r.values.iter().enumerate() {
                        if i > 0 {
                            f.write_str(",")?;
                        }
                        f.write_str(v)?;
                    }
                    f.write_str(")")?;
                }
                Operator::Exists => f.write_str(&r.key)?,
                Operator::DoesNotExist => write!(f, "!{}", r.key)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn expr(key: &str, operator: Operator, values: &[&str]) -> LabelSelector {
        LabelSelector {
            match_labels: Labels::new(),
            match_expressions: vec![Requirement {
                key: key.to_owned(),
                operator,
                values: values.iter().map(|v| (*v).to_owned()).collect(),
            }],
        }
    }

    #[test]
    fn empty_selector_matches_everything() {
        assert!(LabelSelector::everything().matches(&Labels::new()));
        assert!(LabelSelector::everything().matches(&labels(&[("a", "b")])));
    }

    #[test]
    fn match_labels_need_every_pair() {
        let s = LabelSelector::labels([("app", "web"), ("tier", "front")]);
        assert!(s.matches(&labels(&[("app", "web"), ("tier", "front"), ("x", "y")])));
        assert!(!s.matches(&labels(&[("app", "web")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("tier", "back")])));
    }

    #[test]
    fn operators_follow_kubernetes() {
        let web = labels(&[("app", "web")]);
        let db = labels(&[("app", "db")]);
        let none = Labels::new();
        let in_ = expr("app", Operator::In, &["web", "api"]);
        assert!(in_.matches(&web) && !in_.matches(&db) && !in_.matches(&none));
        let not_in = expr("app", Operator::NotIn, &["web"]);
        assert!(!not_in.matches(&web) && not_in.matches(&db));
        assert!(not_in.matches(&none), "NotIn matches a missing key");
        let exists = expr("app", Operator::Exists, &[]);
        assert!(exists.matches(&web) && !exists.matches(&none));
        let dne = expr("app", Operator::DoesNotExist, &[]);
        assert!(!dne.matches(&web) && dne.matches(&none));
    }

    #[test]
    fn labels_and_expressions_are_anded() {
        let mut s = expr("tier", Operator::Exists, &[]);
        s.match_labels.insert("app".into(), "web".into());
        assert!(s.matches(&labels(&[("app", "web"), ("tier", "x")])));
        assert!(!s.matches(&labels(&[("app", "web")])));
        assert!(!s.matches(&labels(&[("tier", "x")])));
    }

    #[test]
    fn invalid_selectors_are_refused_with_the_field() {
        let e = expr("app", Operator::In, &[])
            .validate("spec.podSelector")
            .unwrap_err();
        assert_eq!(e.field, "spec.podSelector.matchExpressions[0].values");
        let e = expr("app", Operator::Exists, &["x"])
            .validate("s")
            .unwrap_err();
        assert!(e.message.contains("takes no values"), "{e}");
        let e = expr("bad key!", Operator::Exists, &[])
            .validate("s")
            .unwrap_err();
        assert_eq!(e.field, "s.matchExpressions[0].key");
        let e = LabelSelector::labels([("app", "no spaces")])
            .validate("s")
            .unwrap_err();
        assert_eq!(e.field, "s.matchLabels.app");
        assert!(expr("example.com/app", Operator::NotIn, &["a", ""])
            .validate("s")
            .is_ok());
    }

    #[test]
    fn unknown_operator_and_fields_are_refused() {
        let e = serde_yaml::from_str::<LabelSelector>(
            "matchExpressions: [{key: a, operator: Equals, values: [b]}]",
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown variant `Equals`"), "{e}");
        let e = serde_yaml::from_str::<LabelSelector>("matchLabel: {a: b}").unwrap_err();
        assert!(e.to_string().contains("unknown field `matchLabel`"), "{e}");
        let s: LabelSelector = serde_yaml::from_str("matchLabels:\nmatchExpressions:").unwrap();
        assert!(s.is_empty(), "null lists are empty, as in Kubernetes");
    }

    #[test]
    fn display_is_kubectl_syntax() {
        let mut s = expr("env", Operator::NotIn, &["dev", "test"]);
        s.match_labels.insert("app".into(), "web".into());
        assert_eq!(s.to_string(), "app=web,env notin (dev,test)");
        assert_eq!(LabelSelector::everything().to_string(), "<all>");
    }
}
