// The orders module's public functions for an order's history and for the
// operators' view across customers. Other modules (payments records what the
// gateway did, the admin module reads and searches) come through here, never
// through the SQL in store.ts.
export {
  confirmedQuantities,
  findOrder,
  orderHistory,
  pendingOrderStats,
  ORDER_EVENT_TYPES,
  recordOrderEvents,
  searchOrders,
  type NewOrderEvent,
  type Order,
  type OrderEventRecord,
  type OrderEventType,
  type OrderSearch,
} from './store.ts';
