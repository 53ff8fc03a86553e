//! The XML of both formats as a small tree: an element may appear once or
//! repeated, and a leaf's value may be an attribute of its parent instead.

use std::collections::BTreeMap;

use super::input;
use crate::ScaffoldError;

/// An element: tag, attributes, trimmed text, child elements, line.
#[derive(Debug, Clone)]
pub(super) struct XNode {
    pub(super) tag: String,
    pub(super) attrs: BTreeMap<String, String>,
    pub(super) text: String,
    pub(super) children: Vec<XNode>,
    pub(super) line: u32,
}

impl XNode {
    fn from(doc: &roxmltree::Document<'_>, n: roxmltree::Node<'_, '_>) -> Self {
        Self {
            tag: n.tag_name().name().to_owned(),
            attrs: n
                .attributes()
                .map(|a| (a.name().to_owned(), a.value().to_owned()))
                .collect(),
            text: n
                .children()
                .filter(|c| c.is_text())
                .filter_map(|c| c.text())
                .collect::<String>()
                .trim()
                .to_owned(),
            children: n
                .children()
                .filter(roxmltree::Node::is_element)
                .map(|c| Self::from(doc, c))
                .collect(),
            line: doc.text_pos_at(n.range().start).row,
        }
    }

    /// Every child called `tag` (none, one or many).
    pub(super) fn all(&self, tag: &str) -> Vec<&XNode> {
        self.children.iter().filter(|c| c.tag == tag).collect()
    }

    pub(super) fn one(&self, tag: &str) -> Option<&XNode> {
        self.children.iter().find(|c| c.tag == tag)
    }

    /// A leaf's value: the child element's text, or an attribute of the
    /// same name; `None` when absent or empty.
    pub(super) fn field(&self, name: &str) -> Option<String> {
        self.one(name)
            .map(|c| c.text.clone())
            .or_else(|| self.attrs.get(name).cloned())
            .filter(|v| !v.is_empty())
    }

    /// Notes children and attributes outside `known`.
    pub(super) fn report_unknown(&self, known: &[&str], notes: &mut Vec<String>) {
        for c in &self.children {
            if !known.contains(&c.tag.as_str()) {
                notes.push(format!(
                    "not carried over: <{}> in <{}> (line {}){}",
                    c.tag,
                    self.tag,
                    c.line,
                    if c.text.is_empty() {
                        String::new()
                    } else {
                        format!(" = {:?}", c.text)
                    }
                ));
            }
        }
        for (k, v) in &self.attrs {
            if !known.contains(&k.as_str()) {
                notes.push(format!(
                    "not carried over: attribute {k}={v:?} of <{}> (line {})",
                    self.tag, self.line
                ));
            }
        }
    }
}

/// Parses `text`, naming `path` in the error.
pub(super) fn parse_xml(text: &str, path: &str) -> Result<XNode, ScaffoldError> {
    let doc = roxmltree::Document::parse(text)
        .map_err(|e| input(path, format!("not well-formed XML: {e}")))?;
    Ok(XNode::from(&doc, doc.root_element()))
}
