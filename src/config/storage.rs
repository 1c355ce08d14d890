//! `[storage]`: where incidents and deliveries are kept, built into the store's own
//! [`StorageConfig`].

use serde::Deserialize;

use super::{ConfigError, Validator};
use crate::store::StorageConfig;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStorage {
    pub(super) url: String,
}

impl Validator<'_> {
    pub(super) fn storage(&self, raw: &RawStorage) -> Result<StorageConfig, ConfigError> {
        let url = &raw.url;
        match url.strip_prefix("sqlite://") {
            Some(path) if !path.is_empty() => Ok(StorageConfig::Sqlite {
                path: self.resolve(path),
            }),
            _ => Err(self.invalid(
                "storage.url",
                format!("{url:?}: expected sqlite://PATH (relative to the config file's folder)"),
            )),
        }
    }
}
