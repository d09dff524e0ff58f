pub mod client;
pub mod coordinator;
pub mod demo;
pub mod gen_data;
pub mod loadtest;
pub mod run;
pub mod s3_server;
pub mod worker;
