//! kadr's engine, in the order data flows through it, with no web code:
//! [`decode`] → [`preprocess`] → [`embed`] (backbones from `kadr-models`; [`batcher`] gathers
//! concurrent requests into one forward pass; [`text`] embeds each image's text and [`fusion`]
//! joins the two) → [`index`] + [`store`] (tied together by [`workspace`], shared by many
//! threads at once; [`expand`] widens a query with its neighbours) → [`vote`] → [`eval`] /
//! [`submit`]. [`dataset`] finds labelled images on
//! disk, [`jobs`] runs the stages over folders, [`settings`] is the one typed configuration;
//! [`csv_safe`] writes CSV a spreadsheet will not run; [`head`] learns the categories from
//! the stored vectors; [`dupes`] finds copies among them and what they leak; [`vlm`] is the
//! one loaded vision-language model, captioning what is indexed and what is uploaded.

pub mod batcher;
pub mod csv_safe;
pub mod dataset;
pub mod decode;
pub mod dupes;
pub mod embed;
pub mod eval;
pub mod expand;
pub mod fusion;
pub mod head;
pub mod index;
pub mod jobs;
pub mod preprocess;
pub mod settings;
pub mod store;
pub mod submit;
pub mod text;
pub mod vlm;
pub mod vote;
pub mod workspace;
