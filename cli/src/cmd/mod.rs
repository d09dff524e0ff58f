pub mod demo;
pub mod gen_data;
pub mod run;
pub mod worker;
