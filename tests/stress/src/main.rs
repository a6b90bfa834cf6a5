fn main() { println!("stress: not written yet"); }
