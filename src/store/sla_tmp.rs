use super::*;
macro_rules! tmp {
    ($t:ty) => {
        #[async_trait]
        impl Sla for $t {
            async fn sla_due(&self, _: i64, _: usize) -> Result<Vec<SlaClockRow>, StoreError> {
                Err(StoreError::Closed)
            }
            async fn sla_next_check(&self) -> Result<Option<i64>, StoreError> {
                Err(StoreError::Closed)
            }
            async fn sla_of_incident(&self, _: String) -> Result<Vec<SlaClockRow>, StoreError> {
                Err(StoreError::Closed)
            }
            async fn sla_of_ticket(&self, _: i64) -> Result<Vec<SlaClockRow>, StoreError> {
                Err(StoreError::Closed)
            }
            async fn sla_list(&self, _: SlaListing) -> Result<Vec<SlaClockRow>, StoreError> {
                Err(StoreError::Closed)
            }
            async fn sla_save(&self, _: Vec<SlaSave>) -> Result<Vec<bool>, StoreError> {
                Err(StoreError::Closed)
            }
        }
    };
}
tmp!(sqlite::Sqlite);
tmp!(postgres::Postgres);
