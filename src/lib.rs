pub mod db;
pub mod messages;
pub mod mqtt;
