//! A Drain-style online template miner.
//!
//! Messages are first masked by the shared scanner (`schemas::text::cheap_template`: PII,
//! numbers, hex, UUIDs, IPs and non-service ports, timestamps, durations, paths, URLs), then
//! short quoted identifiers are masked, then the text is split into tokens: whitespace
//! separates tokens, and runs of CJK characters and CJK punctuation are tokens of their own
//! (Chinese has no spaces; one sentence must not become one giant token).
//!
//! The parse tree has a fixed depth: token count, then the first `prefix_depth` tokens
//! (variable-looking tokens go to a `<*>` branch). A leaf holds template groups; a message
//! joins the most similar group if the share of equal tokens reaches `similarity`,
//! generalising the positions that differ to `<*>`; otherwise it starts a group.
//!
//! Known templates take a fast path: the cheap template's hash maps straight to its group,
//! so a repeated message costs one masking scan and one hash lookup.
//!
//! Ids: a template's id is `schemas::text::template_id_of(template)`, so the same template
//! has the same id in every process, and a message whose group never generalised has the
//! enforcer's cheap id. The number of groups is bounded; the least recently seen group is
//! evicted when a new one would exceed the bound.

use std::collections::HashMap;

use lru::LruCache;
use schemas::text::{cheap_template, template_id_of};

/// The wildcard a generalised position becomes.
pub const WILDCARD: &str = "<*>";

/// Miner settings.
#[derive(Debug, Clone)]
pub struct MinerConfig {
    /// Minimum share of equal tokens for a message to join a group (Drain's `st`).
    pub similarity: f32,
    /// How many leading tokens index the tree below the token-count level.
    pub prefix_depth: usize,
    /// Upper bound on live template groups; the coldest is evicted beyond it.
    pub max_templates: usize,
    /// Upper bound on groups per leaf (Drain's `max_children` analogue).
    pub max_groups_per_leaf: usize,
}

impl Default for MinerConfig {
    fn default() -> Self {
        Self {
            similarity: 0.5,
            prefix_depth: 2,
            max_templates: 50_000,
            max_groups_per_leaf: 200,
        }
    }
}

/// A token of a template and whether a space preceded it in the text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Token {
    text: Box<str>,
    space_before: bool,
}

/// Stable handle of a group inside one miner (a slab slot plus a generation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupKey {
    slot: u32,
    generation: u32,
}

impl GroupKey {
    /// Slot and generation.
    pub fn parts(self) -> (u32, u32) {
        (self.slot, self.generation)
    }
}

#[derive(Debug)]
struct Group {
    tokens: Vec<Token>,
    template: String,
    id: u64,
    count: u64,
    leaf: LeafKey,
    /// Cheap-template hashes routed here by the fast path (bounded).
    cheap_ids: Vec<u64>,
}

type LeafKey = (usize, Vec<Box<str>>);

/// What the miner did with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MinedTemplate {
    /// The group the message belongs to.
    pub key: GroupKey,
    /// The group's template id (`template_id_of(&template)`).
    pub id: u64,
    /// The group's template.
    pub template: String,
    /// A new group was created for this message.
    pub is_new: bool,
    /// The group's template changed (generalised) because of this message; `previous_id`
    /// says what it was.
    pub previous_id: Option<u64>,
    /// Groups evicted to make room (their ids), so callers can drop what they keep per group.
    pub evicted: Vec<(GroupKey, u64)>,
}

/// The online template miner.
#[derive(Debug)]
pub struct TemplateMiner {
    config: MinerConfig,
    groups: Vec<Option<Group>>,
    generations: Vec<u32>,
    free: Vec<u32>,
    leaves: HashMap<LeafKey, Vec<u32>>,
    fast: HashMap<u64, GroupKey>,
    recency: LruCache<GroupKey, ()>,
}

const MAX_CHEAP_IDS_PER_GROUP: usize = 64;

impl TemplateMiner {
    /// A miner with the given settings.
    pub fn new(config: MinerConfig) -> Self {
        Self {
            config,
            groups: Vec::new(),
            generations: Vec::new(),
            free: Vec::new(),
            leaves: HashMap::new(),
            fast: HashMap::new(),
            recency: LruCache::unbounded(),
        }
    }

    /// Number of live template groups.
    pub fn len(&self) -> usize {
        self.recency.len()
    }

    /// No groups yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The settings.
    pub fn config(&self) -> &MinerConfig {
        &self.config
    }

    /// Template and id of a live group.
    pub fn group(&self, key: GroupKey) -> Option<(u64, &str, u64)> {
        let g = self.get(key)?;
        Some((g.id, g.template.as_str(), g.count))
    }

    /// Adds a message and returns its group.
    pub fn add(&mut self, text: &str) -> MinedTemplate {
        let cheap = cheap_template(text);
        let cheap_id = template_id_of(&cheap);
        if let Some(&key) = self.fast.get(&cheap_id)
            && let Some(g) = self.get_mut(key)
        {
            g.count += 1;
            let (id, template) = (g.id, g.template.clone());
            self.recency.promote(&key);
            return MinedTemplate {
                key,
                id,
                template,
                is_new: false,
                previous_id: None,
                evicted: Vec::new(),
            };
        }
        let tokens = tokenize(&mask_quoted(&cheap));
        let leaf = self.leaf_key(&tokens);
        let best = self.best_match(&leaf, &tokens);
        let mut evicted = Vec::new();
        let (key, is_new, previous_id) = match best {
            Some(key) => {
                let previous = self.generalise(key, &tokens);
                (key, false, previous)
            }
            None => {
                while self.len() >= self.config.max_templates.max(1) {
                    match self.evict_coldest() {
                        Some(e) => evicted.push(e),
                        None => break,
                    }
                }
                (self.insert(leaf, tokens), true, None)
            }
        };
        self.recency.promote(&key);
        let Some(g) = self.get_mut(key) else {
            unreachable_group()
        };
        g.count += u64::from(!is_new);
        if g.cheap_ids.len() < MAX_CHEAP_IDS_PER_GROUP {
            g.cheap_ids.push(cheap_id);
            self.fast.insert(cheap_id, key);
        }
        let Some(g) = self.get(key) else {
            unreachable_group()
        };
        MinedTemplate {
            key,
            id: g.id,
            template: g.template.clone(),
            is_new,
            previous_id,
            evicted,
        }
    }

    /// The template a message would get right now, without changing the miner.
    pub fn peek(&self, text: &str) -> (u64, String) {
        let cheap = cheap_template(text);
        let cheap_id = template_id_of(&cheap);
        if let Some(&key) = self.fast.get(&cheap_id)
            && let Some(g) = self.get(key)
        {
            return (g.id, g.template.clone());
        }
        let tokens = tokenize(&mask_quoted(&cheap));
        let leaf = self.leaf_key(&tokens);
        match self.best_match(&leaf, &tokens).and_then(|k| self.get(k)) {
            Some(g) => {
                let merged = merge(&g.tokens, &tokens);
                let t = render(&merged);
                (template_id_of(&t), t)
            }
            None => {
                let t = render(&tokens);
                (template_id_of(&t), t)
            }
        }
    }

    fn get(&self, key: GroupKey) -> Option<&Group> {
        let slot = key.slot as usize;
        if self.generations.get(slot) != Some(&key.generation) {
            return None;
        }
        self.groups.get(slot)?.as_ref()
    }

    fn get_mut(&mut self, key: GroupKey) -> Option<&mut Group> {
        let slot = key.slot as usize;
        if self.generations.get(slot) != Some(&key.generation) {
            return None;
        }
        self.groups.get_mut(slot)?.as_mut()
    }

    fn leaf_key(&self, tokens: &[Token]) -> LeafKey {
        let prefix = tokens
            .iter()
            .take(self.config.prefix_depth)
            .map(|t| {
                if is_variable(&t.text) {
                    Box::from(WILDCARD)
                } else {
                    t.text.clone()
                }
            })
            .collect();
        (tokens.len(), prefix)
    }

    fn best_match(&self, leaf: &LeafKey, tokens: &[Token]) -> Option<GroupKey> {
        let slots = self.leaves.get(leaf)?;
        let mut best: Option<(f32, usize, GroupKey)> = None;
        for &slot in slots {
            let key = GroupKey {
                slot,
                generation: self.generations[slot as usize],
            };
            let Some(g) = self.get(key) else { continue };
            let (sim, wildcards) = similarity(&g.tokens, tokens);
            if sim >= self.config.similarity
                && best.is_none_or(|(s, w, _)| sim > s || (sim == s && wildcards > w))
            {
                best = Some((sim, wildcards, key));
            }
        }
        best.map(|(_, _, k)| k)
    }

    fn generalise(&mut self, key: GroupKey, tokens: &[Token]) -> Option<u64> {
        let g = self.get_mut(key)?;
        let merged = merge(&g.tokens, tokens);
        if merged == g.tokens {
            return None;
        }
        let previous = g.id;
        g.tokens = merged;
        g.template = render(&g.tokens);
        g.id = template_id_of(&g.template);
        Some(previous)
    }

    fn insert(&mut self, leaf: LeafKey, tokens: Vec<Token>) -> GroupKey {
        let template = render(&tokens);
        let group = Group {
            id: template_id_of(&template),
            template,
            tokens,
            count: 1,
            leaf: leaf.clone(),
            cheap_ids: Vec::new(),
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.groups[slot as usize] = Some(group);
                slot
            }
            None => {
                self.groups.push(Some(group));
                self.generations.push(0);
                (self.groups.len() - 1) as u32
            }
        };
        let key = GroupKey {
            slot,
            generation: self.generations[slot as usize],
        };
        let leaf_slots = self.leaves.entry(leaf).or_default();
        leaf_slots.push(slot);
        if leaf_slots.len() > self.config.max_groups_per_leaf {
            // Keep the leaf scan bounded: drop the coldest group of this leaf.
            let coldest = leaf_slots
                .iter()
                .copied()
                .filter(|&s| s != slot)
                .min_by_key(|&s| self.groups[s as usize].as_ref().map_or(0, |g| g.count));
            if let Some(s) = coldest {
                let k = GroupKey {
                    slot: s,
                    generation: self.generations[s as usize],
                };
                self.remove(k);
            }
        }
        self.recency.put(key, ());
        key
    }

    fn evict_coldest(&mut self) -> Option<(GroupKey, u64)> {
        let (key, ()) = self.recency.pop_lru()?;
        let id = self.get(key).map(|g| g.id)?;
        self.remove(key);
        Some((key, id))
    }

    fn remove(&mut self, key: GroupKey) {
        let slot = key.slot as usize;
        let Some(g) = self.groups.get_mut(slot).and_then(Option::take) else {
            return;
        };
        self.recency.pop(&key);
        for id in &g.cheap_ids {
            if self.fast.get(id) == Some(&key) {
                self.fast.remove(id);
            }
        }
        if let Some(slots) = self.leaves.get_mut(&g.leaf) {
            slots.retain(|&s| s != key.slot);
            if slots.is_empty() {
                self.leaves.remove(&g.leaf);
            }
        }
        self.generations[slot] = self.generations[slot].wrapping_add(1);
        self.free.push(key.slot);
    }
}

#[cold]
fn unreachable_group() -> ! {
    // A key returned by `insert`/`best_match` a moment ago is always live.
    panic!("template group vanished while being updated")
}

/// A token that says which dependency failed (a service port or a product name).
fn names_a_dependency(token: &str) -> bool {
    crate::evidence::extract(token).dependency.is_some()
}

fn is_variable(token: &str) -> bool {
    token.contains('<') || token.bytes().any(|b| b.is_ascii_digit())
}

/// Share of positions with equal tokens (wildcards in the group count as equal) and the
/// number of wildcards (ties prefer the more general group).
fn similarity(group: &[Token], tokens: &[Token]) -> (f32, usize) {
    if group.is_empty() {
        return (1.0, 0);
    }
    let mut same = 0usize;
    let mut wildcards = 0usize;
    for (g, t) in group.iter().zip(tokens) {
        if &*g.text == WILDCARD {
            wildcards += 1;
            same += 1;
        } else if g.text == t.text {
            same += 1;
        } else if names_a_dependency(&g.text) || names_a_dependency(&t.text) {
            // `<IP>:5432` vs `<IP>:6379` is what failed, not a variable: never generalise it.
            return (0.0, 0);
        }
    }
    (same as f32 / group.len() as f32, wildcards)
}

fn merge(group: &[Token], tokens: &[Token]) -> Vec<Token> {
    group
        .iter()
        .zip(tokens)
        .map(|(g, t)| {
            if g.text == t.text {
                g.clone()
            } else {
                Token {
                    text: Box::from(WILDCARD),
                    space_before: g.space_before,
                }
            }
        })
        .collect()
}

fn render(tokens: &[Token]) -> String {
    let mut out = String::new();
    for (i, t) in tokens.iter().enumerate() {
        if i > 0 && t.space_before {
            out.push(' ');
        }
        out.push_str(&t.text);
    }
    out
}

/// CJK ideographs, kana, hangul and CJK/full-width punctuation form runs of their own.
pub fn is_cjk(c: char) -> bool {
    matches!(c,
        '\u{2E80}'..='\u{9FFF}'
        | '\u{AC00}'..='\u{D7AF}'
        | '\u{F900}'..='\u{FAFF}'
        | '\u{FF00}'..='\u{FFEF}'
        | '\u{20000}'..='\u{2FA1F}')
}

fn is_cjk_punct(c: char) -> bool {
    matches!(c, '\u{3000}'..='\u{303F}' | '\u{FF01}'..='\u{FF0F}' | '\u{FF1A}'..='\u{FF20}')
}

/// Splits a masked message into tokens: whitespace separates; CJK runs and CJK punctuation
/// are split from neighbouring non-CJK text.
fn tokenize(text: &str) -> Vec<Token> {
    #[derive(PartialEq, Clone, Copy)]
    enum Kind {
        Cjk,
        Punct,
        Other,
    }
    let kind = |c: char| {
        if is_cjk_punct(c) {
            Kind::Punct
        } else if is_cjk(c) {
            Kind::Cjk
        } else {
            Kind::Other
        }
    };
    let mut tokens = Vec::new();
    for (w, word) in text.split_whitespace().enumerate() {
        let mut start = 0;
        let mut current: Option<Kind> = None;
        for (i, c) in word.char_indices() {
            let k = kind(c);
            if let Some(prev) = current
                && (prev != k || k == Kind::Punct)
            {
                tokens.push(Token {
                    text: Box::from(&word[start..i]),
                    space_before: w > 0 && start == 0,
                });
                start = i;
            }
            current = Some(k);
        }
        if start < word.len() {
            tokens.push(Token {
                text: Box::from(&word[start..]),
                space_before: w > 0 && start == 0,
            });
        }
    }
    tokens
}

/// Masks short quoted identifiers (`'orders'`, `"user_42"`, `` `idx_a` ``) — names of
/// tables, keys and fields vary between messages of one kind. Quoted text with spaces is
/// usually a message of its own and stays, and so do quoted hosts and URLs that name a
/// dependency (`host='inventory-svc.prod'`).
fn mask_quoted(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let mut copied = 0;
    while i < b.len() {
        let q = b[i];
        if matches!(q, b'\'' | b'"' | b'`') && (i == 0 || !b[i - 1].is_ascii_alphanumeric()) {
            let inner_start = i + 1;
            let mut j = inner_start;
            while j < b.len() && j - inner_start <= 64 && b[j] != q && !b[j].is_ascii_whitespace() {
                j += 1;
            }
            if j < b.len()
                && b[j] == q
                && j > inner_start
                && j - inner_start <= 64
                && !names_a_dependency(&text[inner_start..j])
            {
                out.push_str(&text[copied..inner_start]);
                out.push_str(WILDCARD);
                copied = j;
                i = j + 1;
                continue;
            }
        }
        i += 1;
    }
    out.push_str(&text[copied..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_shape_messages_share_a_template() {
        let mut m = TemplateMiner::new(MinerConfig::default());
        let a = m.add("user not found: alice in table users");
        let b = m.add("user not found: bob in table users");
        assert_eq!(a.key, b.key);
        assert_eq!(b.template, "user not found: <*> in table users");
        assert_eq!(b.previous_id, Some(a.id));
        let c = m.add("connection refused");
        assert_ne!(c.key, a.key);
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn ids_match_the_cheap_id_until_generalised() {
        let mut m = TemplateMiner::new(MinerConfig::default());
        let text = "dial tcp 10.0.0.7:5432: connect: connection refused";
        let t = m.add(text);
        assert_eq!(t.id, schemas::text::template_id(text));
        let again = m.add("dial tcp 10.9.9.9:5432: connect: connection refused");
        assert_eq!(again.id, t.id);
        assert!(!again.is_new);
    }

    #[test]
    fn chinese_is_split_into_runs() {
        let tokens = tokenize("数据库连接失败：连接被拒绝 host=<IP>");
        let texts: Vec<&str> = tokens.iter().map(|t| &*t.text).collect();
        assert_eq!(texts, ["数据库连接失败", "：", "连接被拒绝", "host=<IP>"]);
        assert_eq!(render(&tokens), "数据库连接失败：连接被拒绝 host=<IP>");
    }

    #[test]
    fn quoted_identifiers_are_masked() {
        assert_eq!(
            mask_quoted("relation \"orders\" does not exist, 'a b' kept"),
            "relation \"<*>\" does not exist, 'a b' kept"
        );
    }

    #[test]
    fn template_count_is_bounded() {
        let mut m = TemplateMiner::new(MinerConfig {
            max_templates: 100,
            ..MinerConfig::default()
        });
        let mut evicted = 0;
        for i in 0..1000 {
            // distinct words so each message is a new template
            let word: String = (0..4)
                .map(|k| (b'a' + ((i / 26usize.pow(k)) % 26) as u8) as char)
                .collect();
            evicted += m.add(&format!("{word} {word} {word}")).evicted.len();
        }
        assert!(m.len() <= 100);
        assert!(evicted >= 800);
    }

    #[test]
    fn stable_across_instances() {
        let mut a = TemplateMiner::new(MinerConfig::default());
        let mut b = TemplateMiner::new(MinerConfig::default());
        for t in [
            "timeout after 30s",
            "lock wait timeout exceeded; try restarting transaction",
        ] {
            assert_eq!(a.add(t).id, b.add(t).id);
        }
    }
}
