//! The one directory of groups dingops knows the chatid of: a verified `/bind` (in the
//! ledger) wins over the groups listed in the configuration. Commands, the governance core
//! and the policy's matching all ask it.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::domain::{Binding, ChatId};
use crate::ledger::{LedgerError, LedgerHandle};

/// Where a group's chatid comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A verified `/bind`: by whom and when.
    Bound { by: String, at_ms: u64 },
    /// The `groups` of the configuration.
    Configured,
}

/// A group's chatid and where it comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Known {
    pub chat_id: ChatId,
    pub source: Source,
}

/// The groups listed in the configuration, looked up behind the ledger's bindings.
#[derive(Debug, Clone, Default)]
pub struct Directory {
    configured: Arc<BTreeMap<String, ChatId>>,
}

impl Directory {
    /// A directory over the configuration's `groups` (openConversationId → chatid).
    pub fn new(configured: BTreeMap<String, ChatId>) -> Self {
        Self {
            configured: Arc::new(configured),
        }
    }

    /// The chatid of `conversation_id`, given its binding in the ledger (read by the caller):
    /// the binding wins over the configuration.
    pub fn known(&self, conversation_id: &str, binding: Option<Binding>) -> Option<Known> {
        match binding {
            Some(b) => Some(Known {
                chat_id: b.chat_id,
                source: Source::Bound {
                    by: b.bound_by,
                    at_ms: b.bound_ms,
                },
            }),
            None => self.configured.get(conversation_id).map(|c| Known {
                chat_id: c.clone(),
                source: Source::Configured,
            }),
        }
    }

    /// [`Directory::known`], reading the binding from `ledger`.
    pub async fn lookup(
        &self,
        ledger: &LedgerHandle,
        conversation_id: &str,
    ) -> Result<Option<Known>, LedgerError> {
        let key = conversation_id.to_owned();
        let binding = ledger.call(move |l| l.binding(&key)).await?;
        Ok(self.known(conversation_id, binding))
    }

    /// Every group known, given the ledger's bindings (read by the caller): the configured
    /// ones, with the bound ones over them.
    pub fn all(&self, bindings: Vec<Binding>) -> BTreeMap<String, ChatId> {
        let mut all = (*self.configured).clone();
        all.extend(bindings.into_iter().map(|b| (b.conversation_id, b.chat_id)));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(s: &str) -> ChatId {
        ChatId::parse(s).unwrap()
    }

    #[test]
    fn a_binding_wins_over_the_configured_chatid_and_both_are_listed() {
        let d = Directory::new(BTreeMap::from([
            ("cidA".to_owned(), chat("chatConfA")),
            ("cidB".to_owned(), chat("chatConfB")),
        ]));
        let bound = Binding {
            conversation_id: "cidA".to_owned(),
            chat_id: chat("chatBoundA"),
            bound_by: "u1".to_owned(),
            bound_ms: 7,
        };
        let a = d.known("cidA", Some(bound.clone())).unwrap();
        assert_eq!(a.chat_id, chat("chatBoundA"));
        assert_eq!(
            a.source,
            Source::Bound {
                by: "u1".to_owned(),
                at_ms: 7
            }
        );
        assert_eq!(d.known("cidB", None).unwrap().source, Source::Configured);
        assert!(d.known("cidC", None).is_none());
        let all = d.all(vec![bound]);
        assert_eq!(all.get("cidA"), Some(&chat("chatBoundA")));
        assert_eq!(all.get("cidB"), Some(&chat("chatConfB")));
    }
}
