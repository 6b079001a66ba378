//! Durable storage behind the policy's store traits: the suppression list in redb, and
//! its CSV import/export. The policy decides what to store; this module only makes it
//! durable (every write transaction is committed with redb's default immediate
//! durability: fsynced before the commit returns — for writes from the feedback path,
//! on the store's own writer thread, see `write_behind`) and must never decide anything
//! itself. Also the OAuth2 token file (`token_file`: the refresh token, 0600 on Unix).

pub mod suppression;
pub mod suppression_csv;
pub mod token_file;
pub mod write_behind;
