// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

/// @title Trading contract of the blockchain-empowered MEC system: escrow and payment channels.
/// @notice The paper's CreationTrade() and Trading() (sections II-III, V.C) plus what a real
/// payment needs: the edge service provider (ESP, the deployer) registers MEC servers and sets
/// the unit price mu; a UE pays the service cost phi_u = mu * xi_u of each task in one of two ways.
///
/// 1. Escrow, one task at a time. Trading() holds phi_u for one MEC server and one task; the MEC
///    server is paid when it records the task's completion before the deadline tau_u, and the UE
///    takes a refund once the deadline has passed without a result. Settlement rules (the two
///    windows never overlap, so completion and refund cannot race):
///      - block.timestamp <= deadline: only the task's MEC server may settle, by complete();
///      - block.timestamp >  deadline: only the UE may settle, by refund().
///
/// 2. Payment channel, many tasks per transaction. A UE deposits once (openChannel) for every MEC
///    server registered then; each (UE, MEC server) pair is a lane. Per task the UE signs, off
///    chain, an EIP-712 voucher for the lane's cumulative payment so far, and the MEC server
///    redeems its newest vouchers of all its lanes in one batch (redeem). Rules:
///      - a lane pays at most capPerLane per generation, and the channel always holds what its
///        unsettled lanes can still claim: balance >= openLanes * capPerLane - redeemedOpen
///        (the rest is "free": the UE may withdraw it, or reopen lanes with it);
///      - a voucher names (ue, mec, generation, cumulative, nonce, taskId, requestDigest) and is
///        signed by the UE for this contract on this chain; it pays cumulative - redeemed, and
///        only if its nonce and its cumulative both exceed the lane's (so an old one pays nothing);
///      - vouchers are redeemable while block.timestamp <= expiry; after expiry only the UE
///        moves, by reclaim(), which takes the whole balance (so a MEC server redeems in time);
///      - the UE closes a lane by closeLane(); the MEC server may still redeem until
///        block.timestamp <= closesAt (the dispute window), and from closesAt + 1 on only the UE
///        may settle it, by withdrawLane() (what the lane did not pay goes to W_u);
///      - the MEC server may settle its lane at once by releaseLane() (giving up further
///        payment in that generation: what the lane did not pay becomes free balance);
///      - a settled lane opens again (reopenLane) in a new generation, so no voucher of an
///        earlier generation pays again.
///
/// Units: unit price mu in wei per Gcycle (1e9 CPU cycles); service demand xi_u in CPU cycles;
/// data size d_u in bits; deadlines, expiries and closing times in seconds of block time (unix);
/// amounts in wei. phi_u = mu * xi_u / 1e9, rounded down.
///
/// Gas: one escrow is one storage slot (amount, deadline, MEC index and state packed), which is
/// what keeps trading() near the 21,000 + 22,100 gas floor of "one transaction writing one slot".
/// A channel is two slots and a lane one (see their structs): a redeemed voucher writes its lane
/// and the channel's two slots, and the batch pays the MEC server's wallet once.
contract TradingContract {
    /// Life cycle of one escrow. None means the (UE, task id) pair was never used.
    enum State { None, Open, Paid, Refunded }

    /// One MEC server: its payee wallet W_m and its index (1, 2, ...; 0 = not registered).
    struct Mec {
        address payable wallet;
        uint32 index;
    }

    /// One escrowed payment, packed into a single 256-bit slot (128 + 40 + 32 + 8 bits).
    struct Escrow {
        uint128 amount;     // phi_u, wei
        uint40 deadline;    // tau_u as an absolute block time, unix seconds
        uint32 mecIndex;    // the MEC server that may complete the task
        State state;
    }

    /// One UE's payment channel, two slots (128 + 128 bits, then 128 + 40 + 32 + 32 + 8 bits).
    /// Slot 0 holds the two amounts a redeemed voucher changes (balance, redeemedOpen), slot 1
    /// what it only reads (cap, expiry, lanes): one slot written per voucher (2,900 gas after the
    /// 2,100 cold read), not two; the other order cost 2,900 gas more per voucher.
    struct Channel {
        uint128 balance;        // wei held for this UE (deposits - redeemed - withdrawn)
        uint128 redeemedOpen;   // wei: sum of `redeemed` over the lanes not settled now
        uint128 capPerLane;     // wei: the most one lane can be paid in its current generation
        uint40 expiry;          // unix s: vouchers are redeemable while block.timestamp <= expiry
        uint32 laneCount;       // mecCount at opening: the lanes are MEC indexes 1..laneCount
        uint32 openLanes;       // lanes not settled (open or closing)
        bool reclaimed;         // the UE took the balance after expiry: the channel is final
    }

    /// One (UE, MEC server) lane, one slot (128 + 64 + 32 + 32 bits). Its first voucher writes a
    /// zero slot (22,100 gas with the cold read), every later one updates it (5,000): a lane is
    /// never deleted, since a cleared slot would make the next voucher pay 22,100 again.
    struct Lane {
        uint128 redeemed;       // wei paid on this lane in this generation (cumulative)
        uint64 nonce;           // highest redeemed voucher nonce in this generation (0: none yet)
        uint32 generation;      // +1 at every settlement; a voucher names the generation it pays
        uint32 closesAt;        // 0 open; t closing, dispute window until block time t; CLOSED settled
    }

    /// A signed voucher as redeem() takes it. The MEC server it pays is the caller (msg.sender),
    /// so a voucher presented by another server does not match its signature.
    struct Voucher {
        address ue;             // the paying UE (signer)
        uint32 generation;      // the lane's generation it pays
        uint128 cumulative;     // wei paid on the lane in this generation, in total so far
        uint64 nonce;           // strictly increasing per lane and generation
        uint64 taskId;          // the UE's id of the task it pays for (not interpreted)
        bytes32 requestDigest;  // digest of the task's request (not interpreted)
        bytes signature;        // 65 bytes r, s, v (v in {27, 28}, s in the lower half order)
    }

    uint256 private constant CYCLES_PER_GCYCLE = 1e9;
    /// Lane.closesAt of a settled lane (a block time that 32 bits of unix seconds never reach
    /// before 2106).
    uint32 private constant CLOSED = type(uint32).max;
    /// secp256k1 order / 2: a signature with a larger s is the malleated twin of a valid one.
    uint256 private constant HALF_ORDER = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0;
    bytes32 private constant DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");
    bytes32 private constant VOUCHER_TYPEHASH = keccak256(
        "Voucher(address ue,address mec,uint32 generation,uint128 cumulative,uint64 nonce,uint64 taskId,bytes32 requestDigest)"
    );
    bytes32 private constant NAME_HASH = keccak256("MecTrading");
    bytes32 private constant VERSION_HASH = keccak256("1");

    /// The edge service provider (ESP): the deployer, who registers MEC servers and sets mu.
    address public immutable provider;
    /// mu, wei per Gcycle.
    uint128 public unitPrice;
    /// Number of registered MEC servers (the last index handed out).
    uint32 public mecCount;
    /// Seconds the MEC server has, after a UE closes a lane, to redeem its newest voucher.
    uint32 public immutable disputeWindow;
    /// The EIP-712 domain separator at deployment and its chain id (recomputed on another chain).
    uint256 private immutable cachedChainId;
    bytes32 private immutable cachedDomainSeparator;

    /// UE identity Id_u (its account) -> wallet W_u that receives refunds; zero = unknown UE.
    mapping(address ue => address payable wallet) public ueWallet;
    /// MEC server account -> its wallet and index.
    mapping(address server => Mec) public mecs;
    /// MEC index -> MEC server account (to read an escrow back as addresses).
    mapping(uint32 index => address server) public mecServer;
    /// (UE, task id) -> escrow. Task ids live in each UE's own namespace.
    mapping(address ue => mapping(uint64 taskId => Escrow)) public escrows;
    /// UE -> its payment channel (laneCount == 0: never opened).
    mapping(address ue => Channel) public channels;
    /// (UE, MEC index) -> lane.
    mapping(address ue => mapping(uint32 mecIndex => Lane)) public lanes;

    event UnitPriceSet(uint256 unitPrice);
    event MecRegistered(address indexed server, uint32 indexed index, address wallet);
    /// The paper's CreationTrade(): Id_u, W_u and PK_u of a new UE, and the price mu it joins at.
    event TradeCreated(address indexed ue, address wallet, bytes publicKey, uint256 unitPrice);
    /// The paper's Trading(): phi_u of task (d_u, xi_u, tau_u) now held in escrow for a MEC server.
    event EscrowOpened(
        address indexed ue,
        uint64 indexed taskId,
        address indexed mec,
        uint256 amount,
        uint256 dataSize,
        uint256 serviceDemand,
        uint256 deadline
    );
    event EscrowPaid(
        address indexed ue, uint64 indexed taskId, address indexed mec, uint256 amount, bytes32 resultHash
    );
    event EscrowRefunded(address indexed ue, uint64 indexed taskId, address wallet, uint256 amount);
    /// A UE's channel: `deposit` wei for `laneCount` lanes of at most `capPerLane` wei each.
    event ChannelOpened(address indexed ue, uint256 deposit, uint256 capPerLane, uint256 expiry, uint32 laneCount);
    event ChannelToppedUp(address indexed ue, uint256 amount, uint256 balance, uint256 capPerLane, uint256 expiry);
    /// `amount` wei paid to MEC server `mec` (into its wallet) by a voucher for `cumulative` wei.
    event VoucherRedeemed(
        address indexed ue,
        address indexed mec,
        uint32 indexed generation,
        uint256 cumulative,
        uint64 nonce,
        uint256 amount,
        uint64 taskId
    );
    event LaneClosing(address indexed ue, address indexed mec, uint32 generation, uint256 closesAt);
    /// Lane `generation` settled: it had paid `redeemed` wei, and `released` wei of its cap were
    /// released: sent to the UE's wallet (withdrawLane) or left as free balance (byMec, releaseLane).
    event LaneSettled(
        address indexed ue, address indexed mec, uint32 generation, uint256 redeemed, uint256 released, bool byMec
    );
    event LaneReopened(address indexed ue, address indexed mec, uint32 generation);
    event FreeWithdrawn(address indexed ue, address wallet, uint256 amount);
    event ChannelReclaimed(address indexed ue, address wallet, uint256 amount);

    error NotProvider(address caller);
    error ZeroUnitPrice();
    error ZeroAddress();
    error MecAlreadyRegistered(address server);
    error UeAlreadyRegistered(address ue);
    error InvalidPublicKey(address caller);
    error UnknownUe(address ue);
    error UnknownMec(address server);
    error ZeroDemand();
    error ZeroPayment();
    /// phi_u = mu * xi_u does not fit the escrow's 128-bit amount (refused, never truncated).
    error AmountTooLarge(uint256 amount, uint256 maxAmount);
    error WrongValue(uint256 expected, uint256 sent);
    error DeadlineInPast(uint256 deadline, uint256 blockTime);
    error TaskExists(address ue, uint64 taskId);
    error UnknownTask(address ue, uint64 taskId);
    error NotTaskMec(address caller);
    error EmptyResult();
    error DeadlinePassed(uint256 deadline, uint256 blockTime);
    error DeadlineNotReached(uint256 deadline, uint256 blockTime);
    error AlreadyPaid(address ue, uint64 taskId);
    error AlreadyRefunded(address ue, uint64 taskId);
    error TransferFailed(address to);
    error ZeroDisputeWindow();
    error ChannelExists(address ue);
    error ExpiryInPast(uint256 expiry, uint256 blockTime);
    error NoMecs();
    /// The lanes' reservation (laneCount or openLanes x capPerLane, less what they redeemed, or
    /// one lane's cap) is more than the wei available for it.
    error CapNotCovered(uint256 needed, uint256 available);
    /// The UE has no channel, or reclaimed it.
    error NoChannel(address ue);
    error ChannelExpired(uint256 expiry, uint256 blockTime);
    error ExpiryShortened(uint256 current, uint256 requested);
    error CapDecreased(uint256 current, uint256 requested);
    /// The MEC server registered after the UE's channel opened: the channel has no lane for it.
    error NoLane(address ue, address mec);
    /// The lane is settled (until the UE reopens it).
    error LaneClosed(address ue, address mec, uint32 generation);
    error DisputeWindowOver(uint256 closesAt, uint256 blockTime);
    error WrongGeneration(uint32 expected, uint32 got);
    /// The voucher's nonce or cumulative amount is not above the lane's.
    error StaleVoucher(uint64 laneNonce, uint64 nonce, uint256 redeemed, uint256 cumulative);
    error OverCap(uint256 cumulative, uint256 cap);
    error BadSignature(address ue);
    error LaneNotOpen(address ue, address mec);
    error LaneNotClosing(address ue, address mec);
    error DisputeWindowOpen(uint256 closesAt, uint256 blockTime);
    error LaneNotClosed(address ue, address mec);
    error InsufficientFree(uint256 requested, uint256 free);
    error ChannelNotExpired(uint256 expiry, uint256 blockTime);

    modifier onlyProvider() {
        if (msg.sender != provider) revert NotProvider(msg.sender);
        _;
    }

    /// @param unitPrice_ mu, wei per Gcycle.
    /// @param disputeWindow_ seconds a MEC server has to answer a UE's closeLane (> 0).
    constructor(uint128 unitPrice_, uint32 disputeWindow_) {
        if (unitPrice_ == 0) revert ZeroUnitPrice();
        if (disputeWindow_ == 0) revert ZeroDisputeWindow();
        provider = msg.sender;
        unitPrice = unitPrice_;
        disputeWindow = disputeWindow_;
        cachedChainId = block.chainid;
        cachedDomainSeparator = _domainSeparator();
        emit UnitPriceSet(unitPrice_);
    }

    // ------------------------------------------------------------------ ESP

    /// Set mu (wei per Gcycle). Escrows already open keep the amount they were opened with.
    function setUnitPrice(uint128 newUnitPrice) external onlyProvider {
        if (newUnitPrice == 0) revert ZeroUnitPrice();
        unitPrice = newUnitPrice;
        emit UnitPriceSet(newUnitPrice);
    }

    /// Register MEC server `server` (the account that completes tasks), paid into `wallet`.
    function registerMec(address server, address payable wallet) external onlyProvider returns (uint32 index) {
        if (server == address(0) || wallet == address(0)) revert ZeroAddress();
        if (mecs[server].index != 0) revert MecAlreadyRegistered(server);
        index = ++mecCount;
        mecs[server] = Mec(wallet, index);
        mecServer[index] = server;
        emit MecRegistered(server, index, wallet);
    }

    // ------------------------------------------------------------------ UE

    /// The paper's CreationTrade(): register the caller as UE u.
    /// @param wallet W_u, where refunds go (may be the caller itself).
    /// @param publicKey PK_u, the 64-byte uncompressed secp256k1 key without its 0x04 prefix;
    ///        it must hash to the caller's address Id_u, so only key holders (not contracts) join.
    function createTrade(address payable wallet, bytes calldata publicKey) external {
        _register(wallet, publicKey);
    }

    /// The paper's Trading(): pay phi_u = mu * xi_u into escrow for task `taskId` on MEC `mecServer_`.
    /// @param dataSize d_u, bits (recorded in the event, not priced).
    /// @param serviceDemand xi_u, CPU cycles.
    /// @param deadline tau_u as an absolute block time, unix seconds; must be in the future.
    function trading(address mecServer_, uint64 taskId, uint64 dataSize, uint64 serviceDemand, uint40 deadline)
        external
        payable
    {
        if (ueWallet[msg.sender] == address(0)) revert UnknownUe(msg.sender);
        uint32 mecIndex = mecs[mecServer_].index;
        if (mecIndex == 0) revert UnknownMec(mecServer_);
        if (serviceDemand == 0) revert ZeroDemand();
        uint256 amount = uint256(unitPrice) * serviceDemand / CYCLES_PER_GCYCLE;
        if (amount == 0) revert ZeroPayment();
        // mu < 2^128 and xi_u < 2^64 make amounts up to 2^192 possible: the escrow keeps 128
        // bits, so a larger amount is refused here rather than cut (and the rest stranded).
        if (amount > type(uint128).max) revert AmountTooLarge(amount, type(uint128).max);
        if (msg.value != amount) revert WrongValue(amount, msg.value);
        if (deadline <= block.timestamp) revert DeadlineInPast(deadline, block.timestamp);
        Escrow storage e = escrows[msg.sender][taskId];
        if (e.state != State.None) revert TaskExists(msg.sender, taskId);
        escrows[msg.sender][taskId] = Escrow(uint128(amount), deadline, mecIndex, State.Open);
        emit EscrowOpened(msg.sender, taskId, mecServer_, amount, dataSize, serviceDemand, deadline);
    }

    /// The UE takes its payment back after the deadline passed without a completion.
    function refund(uint64 taskId) external {
        Escrow storage e = escrows[msg.sender][taskId];
        State state = e.state;
        if (state == State.None) revert UnknownTask(msg.sender, taskId);
        if (state == State.Paid) revert AlreadyPaid(msg.sender, taskId);
        if (state == State.Refunded) revert AlreadyRefunded(msg.sender, taskId);
        if (block.timestamp <= e.deadline) revert DeadlineNotReached(e.deadline, block.timestamp);
        uint256 amount = e.amount;
        // Checks-effects-interactions: the escrow is closed before any ether leaves.
        e.state = State.Refunded;
        address payable wallet = ueWallet[msg.sender];
        emit EscrowRefunded(msg.sender, taskId, wallet, amount);
        _send(wallet, amount);
    }

    // ------------------------------------------------------------------ MEC

    /// The task's MEC server records its completion (`resultHash` commits to the result it
    /// returned to the UE) before the deadline, and is paid phi_u into its wallet W_m.
    function complete(address ue, uint64 taskId, bytes32 resultHash) external {
        if (resultHash == bytes32(0)) revert EmptyResult();
        Escrow storage e = escrows[ue][taskId];
        State state = e.state;
        if (state == State.None) revert UnknownTask(ue, taskId);
        Mec memory mec = mecs[msg.sender];
        if (mec.index == 0 || mec.index != e.mecIndex) revert NotTaskMec(msg.sender);
        if (state == State.Paid) revert AlreadyPaid(ue, taskId);
        if (state == State.Refunded) revert AlreadyRefunded(ue, taskId);
        if (block.timestamp > e.deadline) revert DeadlinePassed(e.deadline, block.timestamp);
        uint256 amount = e.amount;
        // Checks-effects-interactions: the escrow is closed before any ether leaves, so a
        // wallet that re-enters finds it Paid.
        e.state = State.Paid;
        emit EscrowPaid(ue, taskId, msg.sender, amount, resultHash);
        _send(mec.wallet, amount);
    }

    // ------------------------------------------------------------------ channel: UE

    /// Open the caller's payment channel with msg.value wei, one lane per MEC server registered
    /// now (indexes 1..mecCount), each paying at most `capPerLane` wei per generation.
    /// @param wallet W_u, only used when registering (with a non-empty `publicKey`).
    /// @param publicKey PK_u: registers the caller as createTrade() does; empty if registered.
    /// @param expiry last block time (unix s) at which vouchers are redeemable.
    /// @param capPerLane wei; msg.value must cover mecCount x capPerLane.
    function openChannel(address payable wallet, bytes calldata publicKey, uint40 expiry, uint128 capPerLane)
        external
        payable
    {
        if (channels[msg.sender].laneCount != 0) revert ChannelExists(msg.sender);
        if (publicKey.length != 0) {
            _register(wallet, publicKey);
        } else if (ueWallet[msg.sender] == address(0)) {
            revert UnknownUe(msg.sender);
        }
        if (expiry <= block.timestamp) revert ExpiryInPast(expiry, block.timestamp);
        uint32 laneCount = mecCount;
        if (laneCount == 0) revert NoMecs();
        if (msg.value > type(uint128).max) revert AmountTooLarge(msg.value, type(uint128).max);
        uint256 needed = uint256(laneCount) * capPerLane;
        if (msg.value < needed) revert CapNotCovered(needed, msg.value);
        channels[msg.sender] = Channel({balance: uint128(msg.value), redeemedOpen: 0, capPerLane: capPerLane,
                                        expiry: expiry, laneCount: laneCount, openLanes: laneCount, reclaimed: false});
        emit ChannelOpened(msg.sender, msg.value, capPerLane, expiry, laneCount);
    }

    /// Add msg.value wei (may be 0), and/or extend the expiry, and/or raise the cap of every lane
    /// (closing ones too). Before expiry only; nothing may decrease.
    /// @param expiry unix s, >= the current expiry. @param capPerLane wei, >= the current cap.
    function topUp(uint40 expiry, uint128 capPerLane) external payable {
        Channel storage c = _channel(msg.sender);
        Channel memory ch = c;
        if (block.timestamp > ch.expiry) revert ChannelExpired(ch.expiry, block.timestamp);
        if (expiry < ch.expiry) revert ExpiryShortened(ch.expiry, expiry);
        if (capPerLane < ch.capPerLane) revert CapDecreased(ch.capPerLane, capPerLane);
        uint256 balance = ch.balance + msg.value;
        if (balance > type(uint128).max) revert AmountTooLarge(balance, type(uint128).max);
        uint256 needed = uint256(ch.openLanes) * capPerLane - ch.redeemedOpen;
        if (balance < needed) revert CapNotCovered(needed, balance);
        c.balance = uint128(balance);
        c.capPerLane = capPerLane;
        c.expiry = expiry;
        emit ChannelToppedUp(msg.sender, msg.value, balance, capPerLane, expiry);
    }

    /// Start closing the caller's lane with MEC server `mecServer_`: it may still redeem until
    /// block time now + disputeWindow; after that the caller settles it with withdrawLane().
    function closeLane(address mecServer_) external {
        (, Lane storage lane) = _ueLane(msg.sender, mecServer_);
        Lane memory l = lane;
        if (l.closesAt != 0) revert LaneNotOpen(msg.sender, mecServer_);
        // Checked uint32 addition: reverts rather than wrap for a window reaching past 2106.
        uint32 closesAt = uint32(block.timestamp) + disputeWindow;
        lane.closesAt = closesAt;
        emit LaneClosing(msg.sender, mecServer_, l.generation, closesAt);
    }

    /// Settle a closing lane after its dispute window: what the lane did not pay of its cap
    /// (capPerLane - redeemed, wei) goes to the caller's wallet W_u.
    function withdrawLane(address mecServer_) external {
        (Channel storage c, Lane storage lane) = _ueLane(msg.sender, mecServer_);
        Lane memory l = lane;
        if (l.closesAt == 0 || l.closesAt == CLOSED) revert LaneNotClosing(msg.sender, mecServer_);
        if (block.timestamp <= l.closesAt) revert DisputeWindowOpen(l.closesAt, block.timestamp);
        uint128 rest = _settle(c, lane, l);
        // Checks-effects-interactions: the lane is settled before any ether leaves.
        c.balance -= rest;
        address payable wallet = ueWallet[msg.sender];
        emit LaneSettled(msg.sender, mecServer_, l.generation, l.redeemed, rest, false);
        _send(wallet, rest);
    }

    /// Open a settled lane again, in its new generation; the channel's free balance must cover
    /// one more lane's cap.
    function reopenLane(address mecServer_) external {
        (Channel storage c, Lane storage lane) = _ueLane(msg.sender, mecServer_);
        Lane memory l = lane;
        if (l.closesAt != CLOSED) revert LaneNotClosed(msg.sender, mecServer_);
        uint256 free = _free(c);
        if (free < c.capPerLane) revert CapNotCovered(c.capPerLane, free);
        lane.closesAt = 0;
        c.openLanes += 1;
        emit LaneReopened(msg.sender, mecServer_, l.generation);
    }

    /// Withdraw `amount` wei of the free balance (what no unsettled lane can claim) to W_u.
    function withdrawFree(uint128 amount) external {
        Channel storage c = _channel(msg.sender);
        uint256 free = _free(c);
        if (amount > free) revert InsufficientFree(amount, free);
        c.balance -= amount;
        address payable wallet = ueWallet[msg.sender];
        emit FreeWithdrawn(msg.sender, wallet, amount);
        _send(wallet, amount);
    }

    /// After expiry, take the whole balance to W_u; the channel is then final (never reopened).
    function reclaim() external {
        Channel storage c = _channel(msg.sender);
        if (block.timestamp <= c.expiry) revert ChannelNotExpired(c.expiry, block.timestamp);
        uint256 amount = c.balance;
        // Nothing is left for any lane, so the amounts go to zero with the balance (the
        // invariant holds trivially, and clearing slot 0 refunds gas); expiry and laneCount stay.
        c.balance = 0;
        c.capPerLane = 0;
        c.redeemedOpen = 0;
        c.openLanes = 0;
        c.reclaimed = true;
        address payable wallet = ueWallet[msg.sender];
        emit ChannelReclaimed(msg.sender, wallet, amount);
        _send(wallet, amount);
    }

    // ------------------------------------------------------------------ channel: MEC

    /// Redeem UEs' vouchers as the MEC server they pay (the caller), in order; one transfer of
    /// the total to the caller's wallet W_m at the end. Any bad voucher reverts the whole batch
    /// with its error (the binding finds it before sending).
    function redeem(Voucher[] calldata vouchers) external {
        Mec memory mec = mecs[msg.sender];
        if (mec.index == 0) revert UnknownMec(msg.sender);
        bytes32 domain = domainSeparator();
        uint256 total;
        for (uint256 i; i < vouchers.length; ++i) {
            total += _redeem(vouchers[i], mec.index, domain);
        }
        // Checks-effects-interactions: every lane is updated before the one transfer.
        if (total != 0) _send(mec.wallet, total);
    }

    /// The caller, a MEC server, settles its lane of UE `ue` at once (open or closing), giving up
    /// what it has not redeemed in this generation: the rest of the cap becomes free balance.
    function releaseLane(address ue) external {
        uint32 index = mecs[msg.sender].index;
        if (index == 0) revert UnknownMec(msg.sender);
        Channel storage c = _channel(ue);
        if (index > c.laneCount) revert NoLane(ue, msg.sender);
        Lane storage lane = lanes[ue][index];
        Lane memory l = lane;
        if (l.closesAt == CLOSED) revert LaneClosed(ue, msg.sender, l.generation);
        uint128 rest = _settle(c, lane, l);
        emit LaneSettled(ue, msg.sender, l.generation, l.redeemed, rest, true);
    }

    // ------------------------------------------------------------------ reads

    /// The EIP-712 domain separator of vouchers: {name "MecTrading", version "1", chainId,
    /// verifyingContract}; recomputed if the chain id is not the deployment's (a fork).
    function domainSeparator() public view returns (bytes32) {
        return block.chainid == cachedChainId ? cachedDomainSeparator : _domainSeparator();
    }

    /// phi_u = mu * xi_u / 1e9 in wei for a service demand xi_u in CPU cycles, at the current mu.
    function quote(uint64 serviceDemand) external view returns (uint256) {
        return uint256(unitPrice) * serviceDemand / CYCLES_PER_GCYCLE;
    }

    /// Register the caller as UE (the paper's CreationTrade(); see createTrade).
    function _register(address payable wallet, bytes calldata publicKey) private {
        if (wallet == address(0)) revert ZeroAddress();
        if (publicKey.length != 64 || address(uint160(uint256(keccak256(publicKey)))) != msg.sender) {
            revert InvalidPublicKey(msg.sender);
        }
        if (ueWallet[msg.sender] != address(0)) revert UeAlreadyRegistered(msg.sender);
        ueWallet[msg.sender] = wallet;
        emit TradeCreated(msg.sender, wallet, publicKey, unitPrice);
    }

    /// Pay one voucher on the caller's lane `mecIndex`; returns the wei it pays.
    function _redeem(Voucher calldata v, uint32 mecIndex, bytes32 domain) private returns (uint256 amount) {
        Channel storage c = channels[v.ue];
        Channel memory ch = c;
        if (ch.laneCount == 0 || ch.reclaimed) revert NoChannel(v.ue);
        if (block.timestamp > ch.expiry) revert ChannelExpired(ch.expiry, block.timestamp);
        if (mecIndex > ch.laneCount) revert NoLane(v.ue, msg.sender);
        Lane storage lane = lanes[v.ue][mecIndex];
        Lane memory l = lane;
        if (l.closesAt == CLOSED) revert LaneClosed(v.ue, msg.sender, l.generation);
        if (l.closesAt != 0 && block.timestamp > l.closesAt) revert DisputeWindowOver(l.closesAt, block.timestamp);
        if (v.generation != l.generation) revert WrongGeneration(l.generation, v.generation);
        if (v.nonce <= l.nonce || v.cumulative <= l.redeemed) {
            revert StaleVoucher(l.nonce, v.nonce, l.redeemed, v.cumulative);
        }
        if (v.cumulative > ch.capPerLane) revert OverCap(v.cumulative, ch.capPerLane);
        _checkSignature(v, domain);
        // redeemed <= cumulative <= capPerLane, and the invariant keeps balance >= capPerLane -
        // redeemed for an unsettled lane: the subtraction below cannot underflow.
        uint128 paid = v.cumulative - l.redeemed;
        lane.redeemed = v.cumulative;
        lane.nonce = v.nonce;
        c.balance = ch.balance - paid;
        c.redeemedOpen = ch.redeemedOpen + paid;
        emit VoucherRedeemed(v.ue, msg.sender, v.generation, v.cumulative, v.nonce, paid, v.taskId);
        return paid;
    }

    /// Revert BadSignature unless `v` is signed by v.ue for the caller (65 bytes, v in {27, 28},
    /// low s: a malleated twin of a signature is refused).
    function _checkSignature(Voucher calldata v, bytes32 domain) private view {
        bytes calldata sig = v.signature;
        if (sig.length != 65) revert BadSignature(v.ue);
        bytes32 r = bytes32(sig[0:32]);
        bytes32 s = bytes32(sig[32:64]);
        uint8 recovery = uint8(sig[64]);
        if ((recovery != 27 && recovery != 28) || uint256(s) > HALF_ORDER) revert BadSignature(v.ue);
        bytes32 structHash = keccak256(
            abi.encode(
                VOUCHER_TYPEHASH, v.ue, msg.sender, v.generation, v.cumulative, v.nonce, v.taskId, v.requestDigest
            )
        );
        bytes32 digest = keccak256(abi.encodePacked("\x19\x01", domain, structHash));
        // v.ue has a channel, so it is not address(0), which ecrecover returns for a bad signature.
        if (ecrecover(digest, recovery, r, s) != v.ue) revert BadSignature(v.ue);
    }

    /// The channel of `ue`, if it exists and was not reclaimed.
    function _channel(address ue) private view returns (Channel storage c) {
        c = channels[ue];
        if (c.laneCount == 0 || c.reclaimed) revert NoChannel(ue);
    }

    /// The channel of `ue` and its lane with MEC server `mecServer_`.
    function _ueLane(address ue, address mecServer_) private view returns (Channel storage c, Lane storage lane) {
        c = _channel(ue);
        uint32 index = mecs[mecServer_].index;
        if (index == 0) revert UnknownMec(mecServer_);
        if (index > c.laneCount) revert NoLane(ue, mecServer_);
        lane = lanes[ue][index];
    }

    /// Settle lane `lane` (read as `l`): its reservation leaves the channel's books and its
    /// generation ends. Returns the wei of its cap it never paid (the caller decides where it goes).
    function _settle(Channel storage c, Lane storage lane, Lane memory l) private returns (uint128 rest) {
        rest = c.capPerLane - l.redeemed;
        c.openLanes -= 1;
        c.redeemedOpen -= l.redeemed;
        lane.redeemed = 0;
        lane.nonce = 0;
        lane.generation = l.generation + 1;
        lane.closesAt = CLOSED;
    }

    /// Wei of the channel that no unsettled lane can claim: balance - (openLanes x cap - redeemedOpen).
    function _free(Channel storage c) private view returns (uint256) {
        return c.balance - (uint256(c.openLanes) * c.capPerLane - c.redeemedOpen);
    }

    function _domainSeparator() private view returns (bytes32) {
        return keccak256(abi.encode(DOMAIN_TYPEHASH, NAME_HASH, VERSION_HASH, block.chainid, address(this)));
    }

    function _send(address payable to, uint256 amount) private {
        (bool ok,) = to.call{value: amount}("");
        if (!ok) revert TransferFailed(to);
    }
}
