//! Ansible's YAML inventory: `all: {hosts: …, children: …, vars: …}`, groups nested under `children`.

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::{ImportError, Inventory, Var};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct YGroup {
    #[serde(default)]
    hosts: Option<Pairs<Option<Pairs<Value>>>>,
    #[serde(default)]
    children: Option<Pairs<Option<YGroup>>>,
    #[serde(default)]
    vars: Option<Pairs<Value>>,
}

type Value = Spanned<serde_json::Value>;

/// A YAML map in file order, keys with their positions.
struct Pairs<V>(Vec<(Spanned<String>, V)>);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Pairs<V> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> serde::de::Visitor<'de> for Visit<V> {
            type Value = Pairs<V>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Pairs<V>, A::Error> {
                let mut out = Vec::new();
                while let Some(k) = m.next_key::<Spanned<String>>()? {
                    out.push((k, m.next_value()?));
                }
                Ok(Pairs(out))
            }
        }
        d.deserialize_map(Visit(std::marker::PhantomData))
    }
}

pub fn parse(file: &str, text: &str) -> Result<Inventory, ImportError> {
    let top: Pairs<Option<YGroup>> = serde_saphyr::from_str(text).map_err(|e| {
        let line = e.location().map_or(1, |l| l.line());
        // serde-saphyr words its own position into the message; ours leads with file:line.
        let message =
            crate::config::strip_location_suffix(e.to_string().lines().next().unwrap_or("invalid YAML").trim());
        ImportError::Syntax {
            file: file.to_string(),
            line,
            message,
            hint:
                "an Ansible YAML inventory maps groups to `hosts:`, `children:` and `vars:` (e.g. `all: {children: …}`)"
                    .into(),
        }
    })?;
    let mut inv = Inventory::default();
    for (name, group) in top.0 {
        add_group(&mut inv, &name, group);
    }
    Ok(inv)
}

fn add_group(inv: &mut Inventory, name: &Spanned<String>, group: Option<YGroup>) {
    inv.group_mut(&name.value, name.referenced.line());
    let Some(group) = group else { return };
    for (host, vars) in group.hosts.map(|h| h.0).unwrap_or_default() {
        let vars = vars.map(|v| v.0).unwrap_or_default().iter().map(var).collect();
        inv.add_host(&name.value, &host.value, host.referenced.line(), vars);
    }
    for (child, sub) in group.children.map(|c| c.0).unwrap_or_default() {
        add_group(inv, &child, sub);
        let g = inv.group_mut(&name.value, name.referenced.line());
        if !g.children.contains(&child.value) {
            g.children.push(child.value.clone());
        }
    }
    let vars: Vec<Var> = group.vars.map(|v| v.0).unwrap_or_default().iter().map(var).collect();
    inv.group_mut(&name.value, name.referenced.line()).vars.extend(vars);
}

/// Scalars keep their text (`22` → "22"); a list becomes the comma-separated form INI inventories
/// use (`no_proxy: [a, b]` → "a,b"); a map keeps its JSON form.
fn var((key, value): &(Spanned<String>, Value)) -> Var {
    let scalar = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    };
    let text = match &value.value {
        serde_json::Value::Array(items) => items.iter().map(scalar).collect::<Vec<_>>().join(","),
        other => scalar(other),
    };
    Var { key: key.value.clone(), value: text, line: key.referenced.line() }
}
