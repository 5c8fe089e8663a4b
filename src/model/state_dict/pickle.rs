//! A safe unpickler for the subset of pickle that `torch.save` writes.
//!
//! Python's own unpickler calls whatever the file names, so loading an untrusted `.pth` is
//! code execution. This one never calls anything: it only knows a short allow-list of
//! globals (dicts, tensor rebuilders, storage types) and builds plain data from them; any
//! other global is an error. Every length is checked against the bytes left before it is
//! used, and the stack, memo and object count are bounded, so hostile input fails cleanly.
//!
//! Containers live in an arena ([`Unpickled::objs`]) and values refer to them by index: this
//! keeps shared references (memo) and later mutation (SETITEMS) right without `Rc` cycles,
//! and dropping a deeply nested structure cannot overflow the stack.

use std::collections::HashMap;
use std::rc::Rc;

use super::DType;

/// Bounds on what a pickle may build; a state_dict needs a tiny fraction of each.
const MAX_STACK: usize = 1 << 20;
const MAX_MEMO: usize = 1 << 20;
const MAX_OBJECTS: usize = 1 << 22;
/// Longest `GLOBAL` module or name line we accept.
const MAX_GLOBAL_LINE: usize = 256;

/// An unpickling failure, already worded for a one-line message after the file name.
pub(crate) type PResult<T> = std::result::Result<T, String>;

/// The callables and classes we accept; none is ever called, each is interpreted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Global {
    OrderedDict,
    RebuildTensorV2,
    RebuildParameter,
    RebuildParameterWithState,
    /// `torch.FloatStorage` and friends: the storage type in a persistent id.
    Storage(DType),
}

impl Global {
    fn resolve(module: &str, name: &str) -> PResult<Global> {
        let global = match (module, name) {
            ("collections", "OrderedDict") => Global::OrderedDict,
            ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensorV2,
            ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
            ("torch._utils", "_rebuild_parameter_with_state") => Global::RebuildParameterWithState,
            ("torch", storage) => match storage_dtype(storage) {
                Some(dtype) => Global::Storage(dtype),
                None => return Err(refused(module, name)),
            },
            _ => return Err(refused(module, name)),
        };
        Ok(global)
    }
}

fn refused(module: &str, name: &str) -> String {
    format!("refuses pickle global {module}.{name} (only tensors and dicts are allowed)")
}

fn storage_dtype(name: &str) -> Option<DType> {
    Some(match name {
        "FloatStorage" => DType::F32,
        "HalfStorage" => DType::F16,
        "BFloat16Storage" => DType::BF16,
        "DoubleStorage" => DType::F64,
        "LongStorage" => DType::I64,
        "IntStorage" => DType::I32,
        "ShortStorage" => DType::I16,
        "CharStorage" => DType::I8,
        "ByteStorage" => DType::U8,
        "BoolStorage" => DType::Bool,
        _ => return None,
    })
}

/// A pickled value; containers and tensors are indices into [`Unpickled::objs`].
#[derive(Clone, Debug)]
pub(crate) enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer that does not fit in i64; nothing we need is one.
    BigInt,
    /// Floats and bytes are skipped over: nothing in a state_dict we use is one.
    Float,
    Str(Rc<str>),
    Bytes,
    Global(Global),
    Obj(usize),
}

/// A storage named by a persistent id: the zip entry `<prefix>/data/<key>`.
#[derive(Clone, Debug)]
pub(crate) struct StorageRef {
    pub dtype: DType,
    pub key: Rc<str>,
    /// Number of `dtype` elements the storage holds.
    pub numel: u64,
}

/// A tensor view as `_rebuild_tensor_v2` describes it (offset and strides in elements).
#[derive(Clone, Debug)]
pub(crate) struct TensorRef {
    pub storage: StorageRef,
    pub offset: u64,
    pub shape: Vec<u64>,
    pub strides: Vec<u64>,
}

#[derive(Debug)]
pub(crate) enum Obj {
    Tuple(Vec<Value>),
    List(Vec<Value>),
    /// Key/value pairs in insertion order; a repeated key is resolved by the reader (last wins).
    Dict(Vec<(Value, Value)>),
    Storage(StorageRef),
    Tensor(TensorRef),
}

/// The result of unpickling: the arena of objects and the top-level value.
#[derive(Debug)]
pub(crate) struct Unpickled {
    pub objs: Vec<Obj>,
    pub root: Value,
}

impl Unpickled {
    pub fn obj(&self, value: &Value) -> Option<&Obj> {
        match value {
            Value::Obj(i) => self.objs.get(*i),
            _ => None,
        }
    }
}

/// Unpickle `data`, never calling anything.
pub(crate) fn load(data: &[u8]) -> PResult<Unpickled> {
    let mut machine = Machine {
        data,
        pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        objs: Vec::new(),
    };
    let root = machine.run().map_err(|e| {
        if e.starts_with("refuses") {
            e
        } else {
            format!("bad pickle in data.pkl at byte {}: {e}", machine.pos)
        }
    })?;
    Ok(Unpickled {
        objs: machine.objs,
        root,
    })
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    /// Stack lengths at each MARK (Python's "metastack").
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    objs: Vec<Obj>,
}

impl<'a> Machine<'a> {
    fn take(&mut self, n: usize) -> PResult<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.data.len());
        match end.and_then(|end| self.data.get(self.pos..end)) {
            Some(bytes) => {
                self.pos += n;
                Ok(bytes)
            }
            None => Err(format!(
                "needs {n} bytes but only {} are left (truncated or corrupt)",
                self.data.len().saturating_sub(self.pos)
            )),
        }
    }

    fn array<const N: usize>(&mut self) -> PResult<[u8; N]> {
        let bytes = self.take(N)?;
        bytes.try_into().map_err(|_| "short read".to_string())
    }

    fn u8(&mut self) -> PResult<u8> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> PResult<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> PResult<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A length prefix, checked against the remaining bytes before anything is allocated.
    fn len_u64(&mut self, len: u64) -> PResult<usize> {
        let left = self.data.len().saturating_sub(self.pos);
        match usize::try_from(len) {
            Ok(n) if n <= left => Ok(n),
            _ => Err(format!(
                "claims a length of {len} bytes but only {left} are left"
            )),
        }
    }

    fn line(&mut self) -> PResult<&'a str> {
        let rest = self.data.get(self.pos..).unwrap_or_default();
        let window = rest
            .get(..MAX_GLOBAL_LINE.min(rest.len()))
            .unwrap_or_default();
        let Some(n) = window.iter().position(|&b| b == b'\n') else {
            return Err("GLOBAL name is not a short newline-terminated line".into());
        };
        let bytes = self.take(n + 1)?;
        let text = bytes.get(..n).unwrap_or_default();
        std::str::from_utf8(text).map_err(|_| "GLOBAL name is not UTF-8".to_string())
    }

    fn utf8(&mut self, n: usize) -> PResult<Value> {
        let bytes = self.take(n)?;
        let s = std::str::from_utf8(bytes).map_err(|_| "string is not valid UTF-8".to_string())?;
        Ok(Value::Str(Rc::from(s)))
    }

    fn push(&mut self, value: Value) -> PResult<()> {
        if self.stack.len() >= MAX_STACK {
            return Err(format!("stack deeper than {MAX_STACK}"));
        }
        self.stack.push(value);
        Ok(())
    }

    fn pop(&mut self) -> PResult<Value> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err("pops from an empty stack".into());
        }
        self.stack
            .pop()
            .ok_or_else(|| "pops from an empty stack".to_string())
    }

    fn top(&self) -> PResult<&Value> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err("reads an empty stack".into());
        }
        self.stack
            .last()
            .ok_or_else(|| "reads an empty stack".to_string())
    }

    fn pop_mark(&mut self) -> PResult<Vec<Value>> {
        let mark = self
            .marks
            .pop()
            .ok_or_else(|| "no MARK to pop to".to_string())?;
        if mark > self.stack.len() {
            return Err("MARK beyond the stack".into());
        }
        Ok(self.stack.split_off(mark))
    }

    fn new_obj(&mut self, obj: Obj) -> PResult<Value> {
        if self.objs.len() >= MAX_OBJECTS {
            return Err(format!("more than {MAX_OBJECTS} objects"));
        }
        self.objs.push(obj);
        Ok(Value::Obj(self.objs.len() - 1))
    }

    fn memo_put(&mut self, index: u32) -> PResult<()> {
        let value = self.top()?.clone();
        if self.memo.len() >= MAX_MEMO && !self.memo.contains_key(&index) {
            return Err(format!("memo larger than {MAX_MEMO} entries"));
        }
        self.memo.insert(index, value);
        Ok(())
    }

    fn memo_get(&mut self, index: u32) -> PResult<()> {
        let value = self
            .memo
            .get(&index)
            .cloned()
            .ok_or_else(|| format!("memo entry {index} was never stored"))?;
        self.push(value)
    }

    fn target(&mut self, value: &Value) -> PResult<&mut Obj> {
        match value {
            Value::Obj(i) => self
                .objs
                .get_mut(*i)
                .ok_or_else(|| "dangling object".to_string()),
            _ => Err("adds items to something that is not a dict or list".into()),
        }
    }

    fn set_items(&mut self, items: Vec<Value>) -> PResult<()> {
        if !items.len().is_multiple_of(2) {
            return Err("SETITEMS with an odd number of items".into());
        }
        let dict = self.top()?.clone();
        let Obj::Dict(pairs) = self.target(&dict)? else {
            return Err("SETITEM(S) on something that is not a dict".into());
        };
        let mut items = items.into_iter();
        while let (Some(k), Some(v)) = (items.next(), items.next()) {
            pairs.push((k, v));
        }
        Ok(())
    }

    fn append(&mut self, items: Vec<Value>) -> PResult<()> {
        let list = self.top()?.clone();
        let Obj::List(values) = self.target(&list)? else {
            return Err("APPEND(S) on something that is not a list".into());
        };
        values.extend(items);
        Ok(())
    }

    fn tuple(&mut self, items: Vec<Value>) -> PResult<()> {
        let value = self.new_obj(Obj::Tuple(items))?;
        self.push(value)
    }

    fn int(&mut self, value: i64) -> PResult<()> {
        self.push(Value::Int(value))
    }

    /// LONG1/LONG4: little-endian two's complement of `n` bytes.
    fn long(&mut self, n: usize) -> PResult<()> {
        let bytes = self.take(n)?;
        let value = if bytes.is_empty() {
            Value::Int(0)
        } else if bytes.len() <= 8 {
            let negative = bytes.last().is_some_and(|&b| b & 0x80 != 0);
            let mut buf = if negative { [0xff; 8] } else { [0; 8] };
            for (dst, src) in buf.iter_mut().zip(bytes) {
                *dst = *src;
            }
            Value::Int(i64::from_le_bytes(buf))
        } else {
            Value::BigInt
        };
        self.push(value)
    }

    /// Interpret a call (REDUCE or NEWOBJ) of an allow-listed global.
    fn call(&mut self, callable: Value, args: Value) -> PResult<Value> {
        let Value::Global(global) = callable else {
            return Err("calls something that is not an allowed global".into());
        };
        let args = match self.obj_ref(&args) {
            Some(Obj::Tuple(args)) => args.clone(),
            _ => return Err("call arguments are not a tuple".into()),
        };
        match global {
            Global::OrderedDict if args.is_empty() => self.new_obj(Obj::Dict(Vec::new())),
            Global::OrderedDict => Err("OrderedDict called with arguments".into()),
            Global::RebuildTensorV2 => {
                let tensor = self.rebuild_tensor(&args)?;
                self.new_obj(Obj::Tensor(tensor))
            }
            Global::RebuildParameter | Global::RebuildParameterWithState => {
                // The parameter is its data tensor; requires_grad, hooks and state don't matter.
                args.into_iter()
                    .next()
                    .ok_or_else(|| "_rebuild_parameter without data".into())
            }
            Global::Storage(_) => Err("calls a storage type".into()),
        }
    }

    fn obj_ref(&self, value: &Value) -> Option<&Obj> {
        match value {
            Value::Obj(i) => self.objs.get(*i),
            _ => None,
        }
    }

    fn ints(&self, value: Option<&Value>, what: &str) -> PResult<Vec<u64>> {
        let Some(Obj::Tuple(items)) = value.and_then(|v| self.obj_ref(v)) else {
            return Err(format!("tensor {what} is not a tuple"));
        };
        items
            .iter()
            .map(|v| match v {
                Value::Int(i) => u64::try_from(*i).map_err(|_| format!("negative tensor {what}")),
                _ => Err(format!("tensor {what} holds a non-integer")),
            })
            .collect()
    }

    /// `_rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, hooks[, metadata])`
    fn rebuild_tensor(&self, args: &[Value]) -> PResult<TensorRef> {
        if !(6..=7).contains(&args.len()) {
            return Err(format!("_rebuild_tensor_v2 with {} arguments", args.len()));
        }
        let Some(Obj::Storage(storage)) = args.first().and_then(|v| self.obj_ref(v)) else {
            return Err("_rebuild_tensor_v2 without a storage".into());
        };
        let offset = match args.get(1) {
            Some(Value::Int(i)) => u64::try_from(*i).map_err(|_| "negative storage offset")?,
            _ => return Err("storage offset is not an integer".into()),
        };
        let shape = self.ints(args.get(2), "size")?;
        let strides = self.ints(args.get(3), "stride")?;
        if shape.len() != strides.len() {
            return Err("tensor size and stride differ in length".into());
        }
        // Metadata carries the conj/neg bits: a lazily negated view would read wrong values.
        if let Some(meta) = args.get(6) {
            let empty = match self.obj_ref(meta) {
                Some(Obj::Dict(pairs)) => {
                    pairs.iter().all(|(_, v)| matches!(v, Value::Bool(false)))
                }
                _ => matches!(meta, Value::None),
            };
            if !empty {
                return Err("tensor with conj/neg metadata is not supported".into());
            }
        }
        Ok(TensorRef {
            storage: storage.clone(),
            offset,
            shape,
            strides,
        })
    }

    /// `('storage', torch.FloatStorage, key, location, numel)` as torch.save writes it.
    fn persistent_load(&mut self, pid: Value) -> PResult<Value> {
        let Some(Obj::Tuple(items)) = self.obj_ref(&pid) else {
            return Err("persistent id is not a tuple".into());
        };
        let storage = match items.as_slice() {
            [Value::Str(tag), Value::Global(Global::Storage(dtype)), Value::Str(key), _, Value::Int(numel)]
                if &**tag == "storage" =>
            {
                let numel = u64::try_from(*numel).map_err(|_| "negative storage size")?;
                StorageRef {
                    dtype: *dtype,
                    key: key.clone(),
                    numel,
                }
            }
            _ => return Err("unsupported persistent id (expected a torch storage)".into()),
        };
        self.new_obj(Obj::Storage(storage))
    }

    fn run(&mut self) -> PResult<Value> {
        loop {
            let op = self.u8()?;
            match op {
                // PROTO
                0x80 => {
                    let proto = self.u8()?;
                    if proto > 5 {
                        return Err(format!("unsupported pickle protocol {proto}"));
                    }
                }
                // FRAME: framing is only a read-ahead hint.
                0x95 => {
                    self.u64()?;
                }
                // STOP
                b'.' => return self.pop(),
                b'(' => {
                    if self.marks.len() >= MAX_STACK {
                        return Err("too many MARKs".into());
                    }
                    self.marks.push(self.stack.len());
                }
                // POP, POP_MARK, DUP
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let value = self.top()?.clone();
                    self.push(value)?;
                }
                // EMPTY_DICT, EMPTY_LIST, EMPTY_TUPLE
                b'}' => {
                    let value = self.new_obj(Obj::Dict(Vec::new()))?;
                    self.push(value)?;
                }
                b']' => {
                    let value = self.new_obj(Obj::List(Vec::new()))?;
                    self.push(value)?;
                }
                b')' => self.tuple(Vec::new())?,
                // TUPLE, TUPLE1, TUPLE2, TUPLE3
                b't' => {
                    let items = self.pop_mark()?;
                    self.tuple(items)?;
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.tuple(items)?;
                }
                // LIST, DICT
                b'l' => {
                    let items = self.pop_mark()?;
                    let value = self.new_obj(Obj::List(items))?;
                    self.push(value)?;
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let value = self.new_obj(Obj::Dict(Vec::new()))?;
                    self.push(value)?;
                    self.set_items(items)?;
                }
                // BINUNICODE, SHORT_BINUNICODE, BINUNICODE8
                b'X' => {
                    let n = self.u32()?;
                    let n = self.len_u64(u64::from(n))?;
                    let value = self.utf8(n)?;
                    self.push(value)?;
                }
                0x8c => {
                    let n = usize::from(self.u8()?);
                    let value = self.utf8(n)?;
                    self.push(value)?;
                }
                0x8d => {
                    let n = self.u64()?;
                    let n = self.len_u64(n)?;
                    let value = self.utf8(n)?;
                    self.push(value)?;
                }
                // BINSTRING, SHORT_BINSTRING (Python 2 str): kept as latin-1 text.
                b'T' | b'U' => {
                    let n = if op == b'T' {
                        u64::from(self.u32()?)
                    } else {
                        u64::from(self.u8()?)
                    };
                    let n = self.len_u64(n)?;
                    let text: String = self.take(n)?.iter().map(|&b| char::from(b)).collect();
                    self.push(Value::Str(Rc::from(text)))?;
                }
                // BINBYTES, SHORT_BINBYTES, BINBYTES8, BYTEARRAY8
                b'B' | b'C' | 0x8e | 0x96 => {
                    let n = match op {
                        b'B' => u64::from(self.u32()?),
                        b'C' => u64::from(self.u8()?),
                        _ => self.u64()?,
                    };
                    let n = self.len_u64(n)?;
                    self.take(n)?;
                    self.push(Value::Bytes)?;
                }
                // BININT, BININT1, BININT2, LONG1, LONG4
                b'J' => {
                    let v = i32::from_le_bytes(self.array()?);
                    self.int(i64::from(v))?;
                }
                b'K' => {
                    let v = self.u8()?;
                    self.int(i64::from(v))?;
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.array()?);
                    self.int(i64::from(v))?;
                }
                0x8a => {
                    let n = usize::from(self.u8()?);
                    self.long(n)?;
                }
                0x8b => {
                    let n = i32::from_le_bytes(self.array()?);
                    let n = u64::try_from(n).map_err(|_| "negative LONG4 length")?;
                    let n = self.len_u64(n)?;
                    self.long(n)?;
                }
                // BINFLOAT (8 bytes, big-endian)
                b'G' => {
                    self.take(8)?;
                    self.push(Value::Float)?;
                }
                // NEWTRUE, NEWFALSE, NONE
                0x88 => self.push(Value::Bool(true))?,
                0x89 => self.push(Value::Bool(false))?,
                b'N' => self.push(Value::None)?,
                // BINPUT, LONG_BINPUT, MEMOIZE
                b'q' => {
                    let i = self.u8()?;
                    self.memo_put(u32::from(i))?;
                }
                b'r' => {
                    let i = self.u32()?;
                    self.memo_put(i)?;
                }
                0x94 => {
                    let i = u32::try_from(self.memo.len()).map_err(|_| "memo overflow")?;
                    self.memo_put(i)?;
                }
                // BINGET, LONG_BINGET
                b'h' => {
                    let i = self.u8()?;
                    self.memo_get(u32::from(i))?;
                }
                b'j' => {
                    let i = self.u32()?;
                    self.memo_get(i)?;
                }
                // GLOBAL, STACK_GLOBAL
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.push(Value::Global(Global::resolve(module, name)?))?;
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Value::Str(module), Value::Str(name)) = (module, name) else {
                        return Err("STACK_GLOBAL names are not strings".into());
                    };
                    self.push(Value::Global(Global::resolve(&module, &name)?))?;
                }
                // REDUCE, NEWOBJ
                b'R' | 0x81 => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let value = self.call(callable, args)?;
                    self.push(value)?;
                }
                // BUILD: object state (e.g. an OrderedDict's `_metadata`) is irrelevant here.
                b'b' => {
                    self.pop()?;
                    self.top()?;
                }
                // SETITEM, SETITEMS, APPEND, APPENDS
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.set_items(vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.set_items(items)?;
                }
                b'a' => {
                    let v = self.pop()?;
                    self.append(vec![v])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.append(items)?;
                }
                // BINPERSID
                b'Q' => {
                    let pid = self.pop()?;
                    let value = self.persistent_load(pid)?;
                    self.push(value)?;
                }
                other => return Err(format!("unsupported pickle opcode 0x{other:02x}")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(data: &[u8]) -> String {
        load(data).expect_err("must fail")
    }

    #[test]
    fn refuses_os_system() {
        // GLOBAL os.system, then REDUCE ('echo pwned',): what a malicious pickle looks like.
        let mut p = b"\x80\x02cos\nsystem\nq\x00X\x0a\x00\x00\x00echo pwnedq\x01\x85R.".to_vec();
        assert_eq!(
            err(&p),
            "refuses pickle global os.system (only tensors and dicts are allowed)"
        );
        // The same through protocol 4's STACK_GLOBAL.
        p = b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93\x8c\x011\x85R.".to_vec();
        assert!(err(&p).contains("builtins.eval"));
        // A torch name that is not on the list is refused too.
        assert!(err(b"\x80\x02ctorch\nload\n.").contains("torch.load"));
    }

    #[test]
    fn huge_lengths_fail_before_allocating() {
        assert!(err(b"\x80\x02X\xff\xff\xff\xff").contains("claims a length of 4294967295"));
        let mut p = b"\x80\x04\x8d".to_vec();
        p.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(err(&p).contains("claims a length"));
        assert!(err(b"\x80\x02\x8b\xff\xff\xff\x7f").contains("claims a length"));
    }

    #[test]
    fn malformed_input_fails_cleanly() {
        for bad in [
            &b""[..],
            b"\x80",
            b"\x80\x02.",
            b"\x80\x02t.",
            b"\x80\x02(u.",
            b"\x80\x02h\x05.",
            b"\x80\x02K\x01K\x02s.",
            b"\x80\x02)R.",
            b"\x80\x02}(K\x01u.",
            b"\x80\x02]Q.",
            b"\x80\x02I12\n.",
            b"\x80\x02ccollections\nOrderedDict",
            b"\x80\x02ccollections\nOrderedDict\nK\x01\x85R.",
        ] {
            assert!(load(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn deep_nesting_is_fine() {
        // A million nested 1-tuples: no recursion anywhere, so no stack overflow.
        let mut p = b"\x80\x02N".to_vec();
        p.extend(std::iter::repeat_n(0x85u8, 1_000_000));
        p.push(b'.');
        let u = load(&p).expect("nested tuples");
        assert_eq!(u.objs.len(), 1_000_000);
    }

    #[test]
    fn reads_plain_values() {
        // {'a': [1, -2, 2**40, 1.5, True, None], 'b': b'xy'} in protocol 2 with a shared memo.
        let p = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01]q\x02(K\x01J\xfe\xff\xff\xff\x8a\x06\x00\x00\x00\x00\x00\x01G?\xf8\x00\x00\x00\x00\x00\x00\x88Ne\x8c\x01bC\x02xyu.";
        let u = load(p).expect("plain values");
        let Some(Obj::Dict(pairs)) = u.obj(&u.root) else {
            panic!("not a dict")
        };
        assert_eq!(pairs.len(), 2);
        let Some(Obj::List(items)) = u.obj(&pairs[0].1) else {
            panic!("not a list")
        };
        assert!(matches!(
            items.as_slice(),
            [
                Value::Int(1),
                Value::Int(-2),
                Value::Int(0x0100_0000_0000),
                Value::Float,
                Value::Bool(true),
                Value::None
            ]
        ));
        assert!(matches!(&pairs[1].1, Value::Bytes));
    }
}
