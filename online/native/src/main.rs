fn main() {
    eprintln!("driftrec-reader: work in progress");
}
