//! `${VAR}` expansion against an explicit environment: the process's at `load`, the one a
//! test or `check` passes otherwise. Values that came from the environment (or from a file
//! `${file:…}` names) are remembered: they are secrets, masked wherever text leaves the
//! gateway.

use std::cell::RefCell;

/// Why a `${…}` in a value could not be expanded.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error("unclosed `${{` in {0:?}")]
    Unclosed(String),
    #[error("`${{{0}}}` is not a valid variable name")]
    InvalidName(String),
    #[error("environment variable {0} is not set")]
    Unset(String),
    #[error("cannot read the file named by `${{file:{path}}}`: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
    #[error("a value from the environment contains `{{{{`, which would be read as template code")]
    TemplateCode,
}

/// The environment one load expands `${VAR}` from, and the values it has handed out.
pub struct Env<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
    expanded: RefCell<Vec<String>>,
}

impl<'a> Env<'a> {
    pub fn new(lookup: &'a dyn Fn(&str) -> Option<String>) -> Env<'a> {
        Env {
            lookup,
            expanded: RefCell::default(),
        }
    }

    /// Every value expanded from the environment or a file so far.
    pub fn into_expanded(self) -> Vec<String> {
        self.expanded.into_inner()
    }

    /// A string that is then compiled as a template (URLs, header values, vars): a value from
    /// the environment must not smuggle template code into it.
    pub fn expand_template(&self, raw: &str) -> Result<String, EnvError> {
        let expanded = self.expand(raw)?;
        if expanded.matches("{{").count() > raw.matches("{{").count() {
            return Err(EnvError::TemplateCode);
        }
        Ok(expanded)
    }

    /// Expands `${VAR}`, `${VAR:-default}` and `${file:PATH}`; `$$` is a literal `$`.
    pub fn expand(&self, raw: &str) -> Result<String, EnvError> {
        let mut out = String::with_capacity(raw.len());
        let mut rest = raw;
        while let Some(pos) = rest.find('$') {
            out.push_str(&rest[..pos]);
            let after = &rest[pos + 1..];
            if let Some(stripped) = after.strip_prefix('$') {
                out.push('$');
                rest = stripped;
            } else if let Some(body) = after.strip_prefix('{') {
                let end = body
                    .find('}')
                    .ok_or_else(|| EnvError::Unclosed(raw.to_string()))?;
                out.push_str(&self.value(&body[..end])?);
                rest = &body[end + 1..];
            } else {
                out.push('$');
                rest = after;
            }
        }
        out.push_str(rest);
        Ok(out)
    }

    /// A path: expanded as [`Env::expand`], but what it takes from the environment is not a
    /// secret (a folder name masked in every message would hide more than it protects).
    pub fn expand_path(&self, raw: &str) -> Result<String, EnvError> {
        let handed_out = self.expanded.borrow().len();
        let expanded = self.expand(raw)?;
        self.expanded.borrow_mut().truncate(handed_out);
        Ok(expanded)
    }

    /// The value of one `${spec}`.
    fn value(&self, spec: &str) -> Result<String, EnvError> {
        if let Some(path) = spec.strip_prefix("file:") {
            // A secret kept in a file (Docker/Kubernetes secrets): its content, without the
            // final line break.
            let text = std::fs::read_to_string(path.trim()).map_err(|source| EnvError::File {
                path: path.to_string(),
                source,
            })?;
            let value = text.trim_end_matches(['\r', '\n']).to_string();
            self.expanded.borrow_mut().push(value.clone());
            return Ok(value);
        }
        let (name, default) = match spec.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (spec, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(EnvError::InvalidName(spec.to_string()));
        }
        match ((self.lookup)(name), default) {
            (Some(v), _) if !v.is_empty() => {
                // Values from the environment are secrets; defaults written in the file are
                // not (they are on view in the file anyway).
                self.expanded.borrow_mut().push(v.clone());
                Ok(v)
            }
            (_, Some(d)) => Ok(d.to_string()),
            (Some(v), None) => Ok(v),
            (None, None) => Err(EnvError::Unset(name.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(name: &str) -> Option<String> {
        (name == "A").then(|| "alpha".to_string())
    }

    #[test]
    fn expands_variables_and_defaults() {
        let env = Env::new(&lookup);
        assert_eq!(env.expand("x-${A}-y").unwrap(), "x-alpha-y");
        assert_eq!(env.expand("${B:-dflt}").unwrap(), "dflt");
        assert_eq!(env.expand("$$A $5").unwrap(), "$A $5");
        assert!(
            env.expand("${B}")
                .unwrap_err()
                .to_string()
                .contains("B is not set")
        );
        assert!(matches!(env.expand("${A"), Err(EnvError::Unclosed(_))));
        assert!(matches!(
            env.expand("${A B}"),
            Err(EnvError::InvalidName(_))
        ));
        // Only what came from the environment is a secret, not the default.
        assert_eq!(env.into_expanded(), vec!["alpha".to_string()]);
    }

    #[test]
    fn a_template_value_may_not_gain_template_code_from_the_environment() {
        let braces = |_: &str| Some("{{x}}".to_string());
        let env = Env::new(&braces);
        assert!(matches!(
            env.expand_template("${V}"),
            Err(EnvError::TemplateCode)
        ));
        assert_eq!(env.expand_template("{{a}}").unwrap(), "{{a}}");
    }
}
